//! What the packages install beside the binary, made by the binary itself: shell completions
//! (`brandgate completions SHELL`) and man pages (`brandgate man-pages --dir DIR`).

use crate::support::TestEnv;
use crate::support::daemon::run;

/// The bash completion completes: sourced into a real bash, it offers the subcommands, the
/// subcommands of `agents`, and a subcommand's flags.
#[tokio::test]
async fn the_bash_completion_completes_subcommands_and_flags() {
    let env = TestEnv::new();
    let (code, script, err) = run(&["completions", "bash"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let file = env.file("brandgate.bash", &script);
    let complete = |words: &str| {
        let words = words.to_string();
        let file = file.clone();
        async move {
            let cword = words.split(' ').count() - 1;
            let probe = format!(
                r#"source "{}"
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE="{words}"
COMP_POINT=${{#COMP_LINE}}
_brandgate brandgate "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
                file.display()
            );
            let out = tokio::process::Command::new("bash")
                .args(["--norc", "--noprofile", "-c", &probe])
                .output()
                .await
                .expect("run bash");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut offered: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            offered.sort();
            offered
        }
    };
    let top = complete("brandgate ''").await;
    for sub in [
        "serve",
        "check-config",
        "config",
        "agents",
        "keys",
        "completions",
        "man-pages",
    ] {
        assert!(top.contains(&sub.to_string()), "{sub} not offered: {top:?}");
    }
    let agents = complete("brandgate agents ''").await;
    for sub in ["add", "disable", "enable", "list", "reset-password"] {
        assert!(agents.contains(&sub.to_string()), "{sub}: {agents:?}");
    }
    let flags = complete("brandgate push-test --").await;
    for flag in ["--app", "--config", "--provider", "--text", "--token"] {
        assert!(flags.contains(&flag.to_string()), "{flag}: {flags:?}");
    }
    let shells = complete("brandgate completions ''").await;
    for shell in ["bash", "elvish", "fish", "powershell", "zsh"] {
        assert!(shells.contains(&shell.to_string()), "{shell}: {shells:?}");
    }
}

#[tokio::test]
async fn zsh_and_fish_completions_name_every_subcommand() {
    for shell in ["zsh", "fish"] {
        let (code, script, err) = run(&["completions", shell], &[]).await;
        assert_eq!(code, 0, "{shell}: {err}");
        for sub in [
            "serve",
            "check-config",
            "push-test",
            "reset-password",
            "reseal",
        ] {
            assert!(script.contains(sub), "{shell}: {sub} missing");
        }
    }
    let (code, _, err) = run(&["completions", "tcsh"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

/// One page for brandgate and one per subcommand, each a man page (`.TH`) whose NAME section
/// names it and whose text carries the subcommand's own help.
#[tokio::test]
async fn man_pages_are_written_for_every_subcommand() {
    let env = TestEnv::new();
    let dir = env.path().join("man");
    let (code, _, err) = run(&["man-pages", "--dir", dir.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{err}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for expected in [
        "brandgate.1",
        "brandgate-serve.1",
        "brandgate-check-config.1",
        "brandgate-config-show.1",
        "brandgate-agents-add.1",
        "brandgate-outbox-retry.1",
        "brandgate-completions.1",
    ] {
        assert!(
            pages.contains(&expected.to_string()),
            "{expected}: {pages:?}"
        );
    }
    let serve = std::fs::read_to_string(dir.join("brandgate-serve.1")).unwrap();
    assert!(
        serve.starts_with(".ie") || serve.contains(".TH brandgate-serve 1"),
        "{serve}"
    );
    assert!(serve.contains("brandgate\\-serve"), "{serve}");
    assert!(serve.contains("SIGHUP reloads"), "{serve}");
    let top = std::fs::read_to_string(dir.join("brandgate.1")).unwrap();
    assert!(top.contains(".TH brandgate 1"), "{top}");
    assert!(top.contains("check\\-config"), "{top}");
}
