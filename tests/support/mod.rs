//! Test support: the fakes for what is outside (APNs, FCM), test keys and certificates, the
//! real brandgate binary run as a child process, and an HTTPS client. Shared by the integration
//! tests and the benchmarks.
#![allow(dead_code)]

pub mod attack_tokens;
pub mod client;
pub mod daemon;
pub mod fake;
pub mod fake_apns;
pub mod fake_fcm;
pub mod fake_huawei;
pub mod identity_world;
pub mod idp;
pub mod jose;
pub mod messaging;
pub mod pki;
pub mod postgres;
pub mod proxy;
pub mod relay_world;
pub mod saml_idp;
pub mod standard_webhooks;
pub mod webhook_receiver;

use std::path::{Path, PathBuf};

use fake_apns::{ApnsAuth, FakeApns};
use fake_fcm::FakeFcm;
use fake_huawei::FakeHuawei;
use pki::{ApnsKey, Leaf, TestCa};

pub const KEY_ID: &str = "KEYID12345";
pub const TEAM_ID: &str = "TEAMID1234";
pub const PLATFORM_USER: &str = "platform";
pub const PLATFORM_PASSWORD: &str = "pl@tform-s3cret";

/// One test's world: a directory for config, secrets and state, and a CA whose server
/// certificate brandgate presents.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    server: (PathBuf, PathBuf),
    /// More `[server]` keys for every config made from this env (`trusted_proxies = [...]`).
    pub server_extra: String,
    /// `server.listen` of configs made from this env (default: any free loopback port).
    pub listen: String,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("brandgate test CA");
        let server = ca.server().write(dir.path(), "server");
        TestEnv {
            dir,
            ca,
            server,
            server_extra: String::new(),
            listen: "127.0.0.1:0".into(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a secret file (mode 0600) and returns its path.
    /// The start of a config with a store: `[store]` with the data keys `keys` (key file
    /// lines, written here) and `store_extra` (a PostgreSQL `url`, or nothing for SQLite), then
    /// `[identity]` (which makes the daemon open the store) with its issuer. More `[identity]`
    /// keys may follow.
    pub fn store_section(&self, keys: &str, store_extra: &str) -> String {
        let keys = self.secret("data-keys", keys);
        format!(
            "[store]\ndata_keys_file = \"{}\"\n{store_extra}\n[identity]\nissuer = \"https://brandgate.test\"\n",
            keys.display()
        )
    }

    pub fn secret(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// The server and ops sections: loopback, ephemeral ports, the test certificate, debug logs.
    pub fn base_config(&self) -> String {
        self.base_config_with_tls("")
    }

    /// The listener's certificate file (PEM).
    pub fn server_cert(&self) -> &Path {
        &self.server.0
    }

    /// The base config with `tls_extra` added to `[server.tls]` (such as `client_ca`).
    pub fn base_config_with_tls(&self, tls_extra: &str) -> String {
        format!(
            r#"[server]
listen = "{listen}"
state_dir = "{state}"
{server_extra}
[server.tls]
cert = "{cert}"
key = "{key}"
{tls_extra}
[ops]
listen = "127.0.0.1:0"
[log]
level = "debug"
"#,
            state = self.dir.path().join("state").display(),
            cert = self.server.0.display(),
            key = self.server.1.display(),
            server_extra = self.server_extra,
            listen = self.listen,
        )
    }

    /// The base config plus `rest`.
    pub fn config(&self, rest: &str) -> String {
        format!("{}{rest}", self.base_config())
    }

    /// The default caller auth: HTTP Basic with the platform's password.
    pub fn basic_auth(&self) -> String {
        let pw = self.secret("platform-password", &format!("{PLATFORM_PASSWORD}\n"));
        format!(
            "basic = {{ username = \"{PLATFORM_USER}\", password_file = \"{}\" }}\n",
            pw.display()
        )
    }

    /// An `[[push.apps]]` for a fake APNs with token auth. `app_extra` goes in the app's own
    /// table, `auth` is the `[push.apps.auth]` body, `apns_extra` goes in its `apns` table.
    pub fn apns_app(
        &self,
        id: &str,
        fake: &FakeApns,
        key: &ApnsKey,
        app_extra: &str,
        auth: &str,
        apns_extra: &str,
    ) -> String {
        let p8 = self.secret(&format!("apns-{id}.p8"), &key.p8_pem);
        let ca = fake.ca.write(self.dir.path(), &format!("apns-ca-{id}"));
        format!(
            r#"
[[push.apps]]
id = "{id}"
{app_extra}
[push.apps.auth]
{auth}
[push.apps.apns]
topic = "{id}"
endpoint = "{url}"
token_key_file = "{p8}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
extra_trust_anchors = ["{ca}"]
{apns_extra}
"#,
            url = fake.url(),
            p8 = p8.display(),
            ca = ca.display(),
        )
    }

    /// An `[[push.apps]]` for a fake FCM.
    pub fn fcm_app(&self, id: &str, fake: &FakeFcm, app_extra: &str, auth: &str) -> String {
        let sa = self.secret(&format!("fcm-{id}.json"), &fake.account.json);
        let ca = fake.ca.write(self.dir.path(), &format!("fcm-ca-{id}"));
        format!(
            r#"
[[push.apps]]
id = "{id}"
{app_extra}
[push.apps.auth]
{auth}
[push.apps.fcm]
service_account_file = "{sa}"
endpoint = "{url}"
extra_trust_anchors = ["{ca}"]
"#,
            url = fake.url(),
            sa = sa.display(),
            ca = ca.display(),
        )
    }

    /// An `[[push.apps]]` for a fake Huawei Push Kit; `huawei_extra` goes in its table.
    pub fn huawei_app(
        &self,
        id: &str,
        fake: &FakeHuawei,
        app_extra: &str,
        auth: &str,
        huawei_extra: &str,
    ) -> String {
        let secret = self.secret(&format!("huawei-{id}"), fake_huawei::HUAWEI_SECRET);
        let ca = fake.ca.write(self.dir.path(), &format!("huawei-ca-{id}"));
        format!(
            r#"
[[push.apps]]
id = "{id}"
{app_extra}
[push.apps.auth]
{auth}
[push.apps.huawei]
app_id = "{app_id}"
client_secret_file = "{secret}"
oauth_url = "{url}/oauth2/v3/token"
push_url = "{url}"
extra_trust_anchors = ["{ca}"]
{huawei_extra}
"#,
            app_id = fake_huawei::HUAWEI_APP_ID,
            url = fake.url(),
            secret = secret.display(),
            ca = ca.display(),
        )
    }

    /// A client that trusts this environment's CA.
    pub fn client(&self) -> client::Client {
        client::Client::new(&self.ca.cert_pem)
    }

    /// The embedded store of a daemon that ran on this env (after it stopped).
    pub async fn open_state_store(&self) -> brandgate::store::Store {
        use brandgate::store::{Store, StoreOptions};
        let url = Store::default_url(&self.path().join("state"));
        Store::open(StoreOptions {
            url: &url,
            password: None,
            max_connections: 1,
        })
        .await
        .unwrap()
    }

    /// A client whose connections come from `local` (another loopback address: 127.0.0.2).
    pub fn client_from(&self, local: std::net::IpAddr) -> client::Client {
        client::Client::from_address(&self.ca.cert_pem, local)
    }

    pub fn client_with(&self, identity: &Leaf) -> client::Client {
        client::Client::with_identity(&self.ca.cert_pem, identity)
    }
}

/// A fake APNs with token auth for `topic`, and the key brandgate signs with.
pub async fn apns(topic: &str) -> (FakeApns, ApnsKey) {
    let key = ApnsKey::new();
    let fake = FakeApns::start(
        topic,
        ApnsAuth::Token {
            public_pem: key.public_pem.clone(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
        },
    )
    .await;
    (fake, key)
}

/// The platform's iOS-shaped push request.
pub fn ios_push(token: &str, text: &str, conversation: &str, sequence: i64) -> serde_json::Value {
    serde_json::json!({
        "aps": {"alert": text, "sound": "default"},
        "push-service": 1,
        "device-token": token,
        "backendService": "ams",
        "conversationId": conversation,
        "dialogId": conversation,
        "originatorId": "90588718.2333061110",
        "brandId": "90588711",
        "badge": 3,
        "sequence": sequence,
        "notificationType": "apn"
    })
}

/// The platform's Android-shaped push request.
pub fn android_push(
    token: &str,
    text: &str,
    conversation: &str,
    sequence: i64,
) -> serde_json::Value {
    serde_json::json!({
        "data": {
            "message": text,
            "payload": {
                "backendService": "ams",
                "conversationId": conversation,
                "dialogId": conversation,
                "originatorId": "90588718.2333061110",
                "brandId": "90588711",
                "badge": 4,
                "sequence": sequence
            }
        },
        "push-service": 2,
        "device-token": token,
        "notificationType": "gcm"
    })
}

/// The platform's Huawei push: the Android body shape with `push-service` 3.
pub fn huawei_push(
    token: &str,
    text: &str,
    conversation: &str,
    sequence: i64,
) -> serde_json::Value {
    let mut body = android_push(token, text, conversation, sequence);
    body["push-service"] = 3.into();
    body["notificationType"] = "huawei".into();
    body
}

/// The `Authorization` header for the default platform credentials.
pub fn platform_auth() -> String {
    client::basic(PLATFORM_USER, PLATFORM_PASSWORD)
}
