#!/usr/bin/env python3
"""Writes the third-party licence notices the packages carry (THIRD-PARTY-LICENSES.md).

Every Rust crate linked into the release binary (cargo tree, normal dependencies, the build
target) with its version, licence expression, source and the licence texts its published
crate carries (LICENSE*, LICENCE*, COPYING*, NOTICE*, or its `license-file`). A text shared
word for word by several crates is printed once at the end and named from each. Reads only the
lock file's crates as cargo has them unpacked (run after a build, offline).

With `--c-libraries PREFIX` (what packaging/static-libs.sh printed), also the C libraries
built into the binary, each with the Debian source package version it was built from and the
licence text its source carries.

    python3 packaging/third-party-licenses.py [--c-libraries PREFIX] > THIRD-PARTY-LICENSES.md
"""
import hashlib
import json
import os
import re
import subprocess
import sys

TARGET = "x86_64-unknown-linux-gnu"
TEXT_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|UNLICENSE)([-_.].*)?$", re.IGNORECASE)


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def linked_crates():
    tree = run("cargo", "tree", "--locked", "-e", "normal", "--target", TARGET,
               "--prefix", "none", "--format", "{p}")
    crates = set()
    for line in tree.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("v") and "(/" not in line:
            crates.add((parts[0], parts[1][1:]))
    return crates


# What each static C library is, for the notices (the names are Debian's source packages).
C_LIBRARIES = {
    "openssl": ("Apache-2.0", "https://www.openssl.org/", "libcrypto"),
    "libxml2": ("MIT", "https://gitlab.gnome.org/GNOME/libxml2", "libxml2"),
    "xmlsec1": ("MIT", "https://www.aleksey.com/xmlsec/", "libxmlsec1, libxmlsec1-openssl"),
}


def c_libraries(prefix):
    """(name, Debian version, licence, source, libraries, licence text) per static C library."""
    found = []
    with open(os.path.join(prefix, "VERSIONS"), encoding="utf-8") as f:
        for line in f:
            name, version = line.split()
            licence, source, libraries = C_LIBRARIES[name]
            with open(os.path.join(prefix, "licenses", name), encoding="utf-8", errors="replace") as t:
                text = t.read().strip()
            found.append((name, version, licence, source, libraries, text))
    return found


def label_of(texts, text):
    """The label of a licence text, kept once in `texts` (digest -> (label, text)) however many
    crates or libraries carry it word for word."""
    digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:12]
    if digest not in texts:
        texts[digest] = (f"text-{digest}", text)
    return texts[digest][0]


def main():
    args = sys.argv[1:]
    c_prefix = None
    if args[:1] == ["--c-libraries"] and len(args) == 2:
        c_prefix = args[1]
    elif args:
        sys.exit("usage: third-party-licenses.py [--c-libraries PREFIX]")
    metadata = json.loads(run("cargo", "metadata", "--locked", "--format-version", "1"))
    root = {p["id"] for p in metadata["packages"] if p["source"] is None}
    by_key = {(p["name"], p["version"]): p for p in metadata["packages"] if p["id"] not in root}
    crates = sorted(linked_crates() & set(by_key), key=lambda k: (k[0].lower(), k[1]))
    if not crates:
        sys.exit("no crates found: run from the project after `cargo fetch`")

    texts = {}  # digest -> (label, text)
    entries = []
    missing = []
    for key in crates:
        package = by_key[key]
        directory = os.path.dirname(package["manifest_path"])
        names = sorted(n for n in os.listdir(directory) if TEXT_FILE.match(n))
        if package.get("license_file"):
            names = sorted(set(names) | {package["license_file"]})
        refs = []
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
            refs.append((os.path.basename(name), label_of(texts, text)))
        if not refs:
            missing.append(f"{key[0]} {key[1]}")
        entries.append((package, refs))

    clibs = c_libraries(c_prefix) if c_prefix else []

    out = sys.stdout
    out.write("# Third-party software in brandgate\n\n")
    out.write(
        "brandgate is licensed under Apache-2.0 (/usr/share/doc/brandgate/copyright, or\n"
        "/usr/share/licenses/brandgate/LICENSE). The program links the Rust crates below into\n"
        "/usr/bin/brandgate; each is listed with its licence and the licence texts its\n"
        "published crate carries.\n\n"
        f"Made from Cargo.lock: {len(entries)} crates.\n\n"
    )
    if clibs:
        out.write(
            "# C libraries\n\n"
            "Built from Debian 12's source packages, with Debian's patches, and linked statically\n"
            "into /usr/bin/brandgate (the agents' SAML sign-in checks XML signatures with them).\n\n"
        )
        for name, version, licence, source, libraries, text in clibs:
            label = label_of(texts, text)
            out.write(f"## {name} {version} ({libraries})\n\n")
            out.write(f"- Licence: {licence}\n- Source: {source}, Debian source package "
                      f"{name} {version}\n- Licence text: [{label}](#{label})\n\n")
        out.write("# Rust crates\n\n")
    for package, refs in entries:
        out.write(f"## {package['name']} {package['version']}\n\n")
        out.write(f"- Licence: {package.get('license') or 'not stated'}\n")
        source = package.get("repository") or f"https://crates.io/crates/{package['name']}"
        out.write(f"- Source: {source}\n")
        if refs:
            listed = ", ".join(f"{name} ([{label}](#{label}))" for name, label in refs)
            out.write(f"- Licence texts: {listed}\n\n")
        else:
            out.write("- Licence texts: none in the published crate; the licence above applies\n\n")
    out.write("# Licence texts\n\n")
    for label, text in sorted(texts.values()):
        out.write(f'<a id="{label}"></a>\n\n## {label}\n\n```text\n{text}\n```\n\n')
    if missing:
        print(f"note: {len(missing)} crate(s) carry no licence text: {', '.join(missing)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
