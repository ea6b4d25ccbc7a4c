//! The command line: `check` on every shipped config and on broken ones, and `demo`.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .output()
        .expect("run trident")
}

fn check(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    trident(&["check", "--config", path.to_str().unwrap()])
}

#[test]
fn every_shipped_config_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = trident(&["check", "--config", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn check_reports_every_mistake_and_exits_non_zero() {
    let out = check(
        r#"
        [server]
        http_listen = "localhost"
        [[pools]]
        name = "a"
        endpoints = [ { http = "10.0.0.1:99999" } ]
        [[routes]]
        model = "m"
        pool = "b"
        filters = ["limit", "nope"]
        [filters.limit]
        kind = "rate_limit"
        rate_per_second = 0
        [filters.sso]
        kind = "jwt"
        jwks_url = "ftp://idp.example.com/jwks.json"
        "#,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "5 error(s)",
        "server.http_listen: invalid address \"localhost\"",
        "pools[0].endpoints[0].http: invalid address \"10.0.0.1:99999\"",
        "routes[0].pool: no pool named \"b\"",
        "filters.limit: rate must be a positive number, got 0",
        "filters.sso.jwks_url: invalid URL \"ftp://idp.example.com/jwks.json\": expected https://host/path",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}

#[test]
fn check_never_panics_on_junk() {
    for junk in [
        "",
        "\u{0}\u{1}",
        "[[[",
        "server = []",
        "[server]\nthreads = -1",
        "[[pools]]\nname = 5",
        "routes = \"*\"",
    ] {
        let out = check(junk);
        assert_eq!(out.status.code(), Some(1), "{junk:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{junk:?}: {stderr}");
    }
    let out = trident(&["check", "--config", "/nonexistent/trident.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/trident.toml"));
}

/// What a wrong file (megabytes of one line, one huge value, thousands of
/// mistakes) makes `check` print: bounded per message, per list and per file.
#[test]
fn check_output_stays_small_whatever_the_file() {
    let huge_line = "x".repeat(10 << 20);
    let huge_value = format!("[server]\nhttp_listen = \"{}\"\n", "y".repeat(3 << 20));
    let garbage_line = "z".repeat(3 << 20);
    let many_mistakes = format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {{ http = \"127.0.0.1:1\" }} ]\n{}",
        "[[routes]]\nmodel = \"m\"\npool = \"nope\"\n".repeat(300)
    );
    for (what, text, want) in [
        (
            "10 MiB line",
            huge_line.as_str(),
            "the most a config file may be",
        ),
        ("3 MiB value", huge_value.as_str(), "server.http_listen"),
        ("3 MiB of garbage", garbage_line.as_str(), "invalid TOML"),
        ("300 mistakes", many_mistakes.as_str(), "… and 251 more"),
    ] {
        let out = check(text);
        assert_eq!(out.status.code(), Some(1), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{what}: {stderr:.2000}");
        assert!(
            out.stderr.len() + out.stdout.len() <= 16 << 10,
            "{what}: {} bytes of output",
            out.stderr.len() + out.stdout.len()
        );
    }
}

#[test]
fn run_refuses_a_bad_config_and_a_busy_port() {
    let out = check("[server]\n");
    assert_eq!(out.status.code(), Some(1));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("[server]\nhttp_listen = \"{addr}\"\n[[pools]]\nname = \"a\"\nendpoints = [ {{ http = \"127.0.0.1:1\" }} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n")).unwrap();
    let out = trident(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("server.http_listen: cannot listen on {addr}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_curl_it_prints() {
    // Ports released by `free_port` can be taken by a concurrent test before the demo
    // binds them; the demo then exits at once and we try again on new ports.
    let mut started = None;
    for _ in 0..3 {
        let (http, grpc, admin) = (free_port(), free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_trident"))
            .args([
                "demo",
                "--http-listen",
                &http.to_string(),
                "--grpc-listen",
                &grpc.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn demo");
        if poll_ready(admin, || !matches!(child.try_wait(), Ok(None))).await {
            started = Some((KillOnDrop(child), http));
            break;
        }
        drop(KillOnDrop(child));
    }
    // Killed however the test ends: a demo left running would hold the test's output open.
    let (_demo, http) = started.expect("the demo became ready");
    let client = http1_client();
    let body = r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#;
    let mut backends = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (status, headers, answer) = post(
            &client,
            &format!("http://{http}/v2/models/resnet50/infer"),
            &[],
            body,
        )
        .await;
        assert_eq!(status, 200);
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            answer["outputs"][0]["data"],
            serde_json::json!([1.0, 2.0, 3.0, 4.0])
        );
        backends.insert(header(&headers, "x-mock-backend").to_owned());
    }
    assert!(
        backends.iter().all(|b| b.starts_with("vision-")),
        "served by the vision pool: {backends:?}"
    );
    let (_, headers, _) = post(
        &client,
        &format!("http://{http}/v2/models/bert/infer"),
        &[],
        body,
    )
    .await;
    assert_eq!(header(&headers, "x-mock-backend"), "language-1");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_warns_of_a_host_name_that_does_not_resolve_and_passes() {
    let out = check(
        r#"
        [server]
        http_listen = "127.0.0.1:0"
        [[pools]]
        name = "a"
        endpoints = [ { http = "triton.nothing-here.invalid:8000" } ]
        [[routes]]
        model = "*"
        pool = "a"
        "#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: pools[0].endpoints[0]: host name \"triton.nothing-here.invalid\" does not resolve now"),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_key_that_is_not_its_certificates_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let pair = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = dir.path().join(format!("{name}.pem"));
        let key_file = dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    };
    let (cert, _) = pair("a.test");
    let (_, other_key) = pair("b.test");
    let out = check(&format!(
        "[server]\nhttp_listen = \"127.0.0.1:8000\"\n[server.tls]\ncert_file = \"{}\"\n\
         key_file = \"{}\"\n[[pools]]\nname = \"p\"\nendpoints = [ {{ http = \"10.0.0.1:8000\" }} ]\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        cert.display(),
        other_key.display()
    ));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.tls.key_file: ")
            && stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
}

/// Issue 18: every mistake of a file in one run, as `file:line: path: message`.
#[test]
fn check_reports_every_mistake_in_one_run_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"[server]
acess_log = "stdout"
threads = "4"
http_listen = "0.0.0.0:99999"

[[pools]]
name = "a"
endpoints = [ { http = "10.0.0.1:8000", weight = "heavy" } ]

[[routes]]
model = "*"
pool = "a"
timeout = 5
"#,
    )
    .unwrap();
    let out = trident(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    for want in [
        "5 error(s)".to_owned(),
        format!("{file}:2: server.acess_log: unknown field `acess_log`"),
        format!("{file}:3: server.threads: invalid type: string \"4\""),
        format!("{file}:4: server.http_listen: invalid address \"0.0.0.0:99999\": port 99999 is out of range (1–65535)"),
        format!("{file}:8: pools[0].endpoints[0].weight: invalid type: string \"heavy\""),
        format!("{file}:13: routes[0].timeout: unknown field `timeout`"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("set `http_listen`"), "{stderr}");
    // A syntax error has its line too.
    std::fs::write(
        &path,
        "[server]\nhttp_listen = \"127.0.0.1:8000\"\nthreads = = 2\n",
    )
    .unwrap();
    let out = trident(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{file}:3: invalid TOML: ")),
        "{stderr}"
    );
}

#[test]
fn check_prints_warnings_with_their_lines_and_fails_on_them_only_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"[server]
http_listen = "127.0.0.1:8000"

[[pools]]
name = "a"
endpoints = [ { http = "10.0.0.1:8000" } ]

[[pools]]
name = "unused"
endpoints = [ { http = "10.0.0.2:8000" } ]

[[routes]]
model = "*"
pool = "a"
"#,
    )
    .unwrap();
    let want = format!(
        "{}:9: warning: pools[1].name: no route uses pool \"unused\"",
        path.display()
    );
    let out = trident(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    let out = trident(&["check", "--strict", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    assert!(
        stderr.contains("1 warning(s), failed with --strict"),
        "{stderr}"
    );
}

/// Copies the directory tree at `from` into `to` (the shipped configs name files next to them).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `check --print` of every shipped config is itself a config that passes
/// `check` and prints the same: print → check → same effective config.
#[test]
fn the_printed_config_of_every_shipped_file_checks_and_prints_the_same() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")),
        dir.path(),
    );
    let mut printed = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let print = |path: &std::path::Path| {
            let out = trident(&[
                "check",
                "--print",
                "--secrets",
                "--config",
                path.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let first = print(&path);
        let again = path.with_extension("printed");
        std::fs::write(&again, &first).unwrap();
        assert_eq!(print(&again), first, "{}", path.display());
        printed += 1;
    }
    assert!(printed >= 7, "{printed}");
}

#[test]
fn check_print_redacts_secrets_unless_asked_and_reads_them_from_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("hmac.secret"), format!("{secret}\n")).unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
http_listen = "127.0.0.1:8000"
filters = ["inline", "keys", "from-file", "from-env"]

[[pools]]
name = "a"
endpoints = [ {{ http = "10.0.0.1:8000" }} ]

[[routes]]
model = "*"
pool = "a"

[filters.inline]
kind = "jwt"
hmac_secret = "{secret}"

[filters.keys]
kind = "api_key"
keys = [ {{ tenant = "t", key = "the-api-key" }} ]

[filters.from-file]
kind = "jwt"
hmac_secret_file = "hmac.secret"

[filters.from-env]
kind = "jwt"
hmac_secret_env = "TRIDENT_HMAC"

[tracing]
endpoint = "http://127.0.0.1:4317"
headers = {{ authorization = "Bearer collector-token" }}
"#
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_trident"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .expect("run trident")
    };
    let out = run(&["check"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("filters.from-env.hmac_secret_env: environment variable TRIDENT_HMAC"),
        "{stderr}"
    );
    let env = [("TRIDENT_HMAC", secret)];
    let out = run(&["check", "--print"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for hidden in [secret, "the-api-key", "collector-token"] {
        assert!(!stdout.contains(hidden), "{hidden} in:\n{stdout}");
    }
    assert_eq!(stdout.matches("\"<redacted>\"").count(), 3, "{stdout}");
    // Names of files and variables are not secrets.
    assert!(
        stdout.contains("hmac_secret_file = \"hmac.secret\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("hmac_secret_env = \"TRIDENT_HMAC\""),
        "{stdout}"
    );
    let out = run(&["config", "--print", "--secrets"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shown in [secret, "the-api-key", "collector-token"] {
        assert!(stdout.contains(shown), "{shown} not in:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_shows_the_running_config_redacted_and_follows_reloads() {
    let triton = mock("a", &["m"]).await;
    let secret = "0123456789abcdef0123456789abcdef";
    let body = |timeout: u64| {
        format!(
            "filters = [\"sso\"]\n\n[[pools]]\nname = \"a\"\nconnect_timeout_ms = {timeout}\n\
             endpoints = [ {} ]\n\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n\n\
             [filters.sso]\nkind = \"jwt\"\nhmac_secret = \"{secret}\"\n",
            endpoint(&triton)
        )
    };
    let trident = Trident::start(&body(1500)).await;
    let client = http1_client();
    let url = format!("http://{}/config", trident.admin);
    let (status, headers, text) = get(&client, &url).await;
    let text = String::from_utf8_lossy(&text).into_owned();
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert!(text.contains("connect_timeout_ms = 1500"), "{text}");
    // Defaults the file left out, filled in.
    assert!(text.contains("max_connections = 4096"), "{text}");
    assert!(text.contains("read_timeout_ms = 60000"), "{text}");
    assert!(text.contains("hmac_secret = \"<redacted>\""), "{text}");
    assert!(!text.contains(secret), "{text}");
    let (status, headers, empty) = send(
        &client,
        http::Request::head(&url).body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), text.len().to_string());
    assert!(empty.is_empty());

    let running = std::fs::read_to_string(trident.config_path()).unwrap();
    std::fs::write(
        trident.config_path(),
        running.replace("connect_timeout_ms = 1500", "connect_timeout_ms = 2500"),
    )
    .unwrap();
    let (status, _, report) = post(
        &client,
        &format!("http://{}/reload", trident.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&report));
    let (_, _, text) = get(&client, &url).await;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("connect_timeout_ms = 2500"), "{text}");

    // A refused reload names each mistake's line; /config stays the running one.
    let running = std::fs::read_to_string(trident.config_path()).unwrap();
    let line = running
        .lines()
        .position(|l| l.starts_with("connect_timeout_ms"))
        .unwrap()
        + 1;
    std::fs::write(
        trident.config_path(),
        running.replace("connect_timeout_ms = 2500", "connect_timeout_ms = \"soon\""),
    )
    .unwrap();
    let (status, _, report) = post(
        &client,
        &format!("http://{}/reload", trident.admin),
        &[],
        "",
    )
    .await;
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(status, 422, "{report}");
    assert!(
        report["errors"][0].as_str().unwrap().starts_with(&format!(
            "line {line}: pools[0].connect_timeout_ms: invalid type"
        )),
        "{report}"
    );
    let (_, _, again) = get(&client, &url).await;
    assert_eq!(String::from_utf8_lossy(&again), text);
}
