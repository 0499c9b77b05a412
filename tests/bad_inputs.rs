//! The bad-input corpus (tests/bad_inputs/): every hostile or broken input a user can give, as a
//! file this test applies (controller cases) or builds with the CLI (`cli-*.yaml`). Each file
//! says what the user must see on its `# expect:` line:
//!
//! - `refused message~=TEXT`: the API server refuses the object (CEL) with TEXT in the error;
//! - `reason=R message~=TEXT`: the ImageBuild ends Ready=False with reason R and TEXT in the
//!   message, with a Warning event of that reason, and nothing tagged in Gitea;
//! - `any message~=TEXT`: either of the two above;
//! - `cli exit=N context=K output=O stderr~=TEXT`: `imagebuild build` exits with N and one line
//!   holding TEXT on stderr (context K is made by this test: names git cannot hold, fifos, ...).
//!
//! After the corpus, the controller still answers /healthz and builds a good ImageBuild, and no
//! password or token appears in any message, event or log line.

mod common;
mod controller_support;
mod fault_proxy;
mod robustness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use controller_support as ctl;
use fault_proxy::{CertSpec, FaultProxy, Plan};

/// The context limit of this suite's controller, so a tar bomb needs only a few KiB.
const MAX_CONTEXT_BYTES: u64 = 8 << 20;
const SETTLE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
struct Case {
    name: String,
    text: String,
    expect: BTreeMap<String, String>,
    /// `refused`, `reason`, `any` or `cli`.
    kind: String,
}

fn corpus_dir() -> PathBuf {
    common::repo_root().join("tests/bad_inputs")
}

fn corpus() -> Vec<Case> {
    let mut cases: Vec<Case> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|path| parse_case(&path))
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn parse_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).expect("case file");
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("name")
        .to_owned();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{name}: no `# expect:` line"));
    let mut expect = BTreeMap::new();
    let mut kind = String::new();
    let mut rest = line;
    while !rest.is_empty() {
        for key in ["message~=", "stderr~="] {
            if let Some(v) = rest.strip_prefix(key) {
                expect.insert(key.trim_end_matches("~=").to_owned(), v.to_owned());
                rest = "";
            }
        }
        if rest.is_empty() {
            break;
        }
        let (token, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        match token.split_once('=') {
            Some((k, v)) => {
                if k == "reason" {
                    kind = "reason".into();
                }
                expect.insert(k.to_owned(), v.to_owned());
            }
            None => kind = token.to_owned(),
        }
        rest = tail;
    }
    assert!(
        ["refused", "reason", "any", "cli"].contains(&kind.as_str()),
        "{name}: unknown expectation `{line}`"
    );
    Case {
        name,
        text,
        expect,
        kind,
    }
}

/// Proxies with broken certificates, in front of Gitea (they are never reached further).
struct TlsTraps {
    expired: FaultProxy,
    mismatch: FaultProxy,
}

impl TlsTraps {
    fn start() -> Self {
        let env = common::env();
        let ca = std::fs::read(&env.gitea_ca).expect("gitea ca");
        let plan = || Plan {
            lifetime: Duration::from_secs(900),
            ..Plan::default()
        };
        Self {
            expired: FaultProxy::start(
                &env.gitea,
                &ca,
                CertSpec {
                    expired: true,
                    ..CertSpec::for_names(&["localhost"])
                },
                plan(),
            ),
            mismatch: FaultProxy::start(
                &env.gitea,
                &ca,
                CertSpec::for_names(&["wrong.example"]),
                plan(),
            ),
        }
    }
}

fn substitute(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = text.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

/// An image index in Gitea that holds only a linux/arm64 image: `host/owner/name:1`.
fn arm_only_base() -> &'static str {
    static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let env = common::env();
        let work = tempfile::tempdir().expect("tempdir");
        let repo = env.gitea_image(&common::unique_name("armonly"));
        let context = work.path().join("ctx");
        std::fs::create_dir_all(&context).expect("dir");
        std::fs::write(context.join("a.txt"), "arm").expect("file");
        let file = robustness::write_file(
            work.path(),
            "ib.yaml",
            &format!(
                "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: arm}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n  image: {repo}\n  tags: [arm]\n  platform: linux/arm64\n"
            ),
        );
        let out = common::output_with_stdin(
            std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
                .arg("build")
                .arg("-f")
                .arg(&file)
                .arg("--context")
                .arg(&context)
                .arg("--push")
                .arg("--ca-file")
                .arg(&env.gitea_ca)
                .args(["--username", &env.gitea_user, "--password-stdin"]),
            env.gitea_password.as_bytes(),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let manifest = env
            .raw_manifest(&env.gitea_ca, &env.gitea_creds(), &format!("{repo}:arm"))
            .unwrap_or_default();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": imagebuild::oci::Digest::of(&manifest).to_string(),
                "size": manifest.len(),
                "platform": {"os": "linux", "architecture": "arm64"},
            }],
        });
        env.put_manifest(
            (&env.gitea_ca, &env.gitea_creds()),
            &repo,
            "1",
            "application/vnd.oci.image.index.v1+json",
            &index.to_string(),
        );
        format!("{repo}:1")
    })
}

fn vars(ns: &str, case: &Case, image: &str, traps: &TlsTraps) -> BTreeMap<&'static str, String> {
    let env = common::env();
    BTreeMap::from([
        ("ARM_ONLY_BASE", arm_only_base().to_owned()),
        ("NS", ns.to_owned()),
        ("NAME", case.name.clone()),
        ("IMAGE", image.to_owned()),
        ("GITEA", env.gitea.clone()),
        ("OWNER", env.gitea_owner.clone()),
        ("UNIQUE", common::unique_name("big")),
        (
            "EXPIRED_HOST",
            format!("localhost:{}", traps.expired.port()),
        ),
        (
            "MISMATCH_HOST",
            format!("localhost:{}", traps.mismatch.port()),
        ),
        (
            "EXPIRED_CA",
            robustness::yaml_quoted(&traps.expired.cert_pem),
        ),
        (
            "MISMATCH_CA",
            robustness::yaml_quoted(&traps.mismatch.cert_pem),
        ),
    ])
}

/// What went wrong with one case, or None.
type Outcome = Result<String, String>;

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn every_bad_input_ends_with_a_clear_refusal_and_the_controller_keeps_serving() {
    let env = common::env();
    let traps = TlsTraps::start();
    let controller = robustness::Controller::start(
        &common::unique_name("bad"),
        |config| {
            config["maxContextBytes"] = serde_json::Value::from(MAX_CONTEXT_BYTES);
        },
        &[],
    );
    let ns = controller_support::namespace("bad-inputs");
    let secrets = robustness::secrets(env);
    let cases: Vec<Case> = corpus().into_iter().filter(|c| c.kind != "cli").collect();
    assert!(
        cases.len() >= 30,
        "corpus holds {} controller cases",
        cases.len()
    );

    // Apply everything at once: hostile inputs must not block one another.
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut pending: Vec<(Case, String)> = Vec::new();
    for case in &cases {
        let image = env.gitea_image(&common::unique_name("bad"));
        let manifest = substitute(&case.text, &vars(&ns, case, &image, &traps));
        let out = env.kubectl_stdin(&["apply", "-f", "-"], &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let needle = case.expect.get("message").cloned().unwrap_or_default();
        if !out.status.success() {
            let outcome = if case.kind == "reason" {
                Err(format!("refused by the API server: {stderr}"))
            } else if !stderr.contains(&needle) {
                Err(format!("refused without `{needle}`: {stderr}"))
            } else {
                Ok(format!("refused: {}", stderr.trim()))
            };
            outcomes.insert(case.name.clone(), outcome);
        } else if case.kind == "refused" {
            outcomes.insert(case.name.clone(), Err("accepted by the API server".into()));
        } else {
            pending.push((case.clone(), image));
        }
    }

    let deadline = Instant::now() + SETTLE;
    for (case, image) in pending {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let outcome = std::panic::catch_unwind(|| ctl::wait_settled(&ns, &case.name, left))
            .map_err(|_| "did not settle".to_owned())
            .and_then(|ib| check_failed(&ns, &case, &image, &ib, &secrets));
        outcomes.insert(case.name.clone(), outcome);
    }

    let mut report = String::new();
    for (name, outcome) in &outcomes {
        match outcome {
            Ok(what) => report.push_str(&format!("ok   {name}: {what}\n")),
            Err(why) => report.push_str(&format!("FAIL {name}: {why}\n")),
        }
    }
    eprintln!("{report}");
    assert!(outcomes.values().all(Result::is_ok), "{report}");

    // The controller survived all of it and still builds.
    assert!(
        controller.healthy(),
        "controller not healthy after the corpus"
    );
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "controller panicked:\n{log}");
    assert_eq!(
        robustness::leaked(&log, &secrets),
        Vec::<usize>::new(),
        "secret in the controller log"
    );
    good_build_still_succeeds(&ns);
}

fn check_failed(
    ns: &str,
    case: &Case,
    image: &str,
    ib: &serde_json::Value,
    secrets: &[String],
) -> Outcome {
    let (ready, reason, message) = ctl::ready(ib).ok_or("no Ready condition")?;
    if ready != "False" {
        return Err(format!("Ready={ready} ({reason}: {message})"));
    }
    if let Some(expected) = case.expect.get("reason")
        && *expected != reason
    {
        return Err(format!("reason {reason}, expected {expected}: {message}"));
    }
    let needle = substitute(
        case.expect.get("message").map(String::as_str).unwrap_or(""),
        &BTreeMap::from([("NS", ns.to_owned()), ("NAME", case.name.clone())]),
    );
    if !message.contains(&needle) {
        return Err(format!("message lacks `{needle}`: {message}"));
    }
    let events = ctl::events(ns, &case.name);
    if !events
        .iter()
        .any(|(t, r, _, _)| t == "Warning" && *r == reason)
    {
        return Err(format!("no Warning event {reason}: {events:?}"));
    }
    let all_text = format!("{message} {events:?} {}", ib["status"]);
    if !robustness::leaked(&all_text, secrets).is_empty() {
        return Err("a secret appears in the status or events".into());
    }
    if image.starts_with(&common::env().gitea)
        && ctl::registry_digest(common::env(), image, "latest").is_some()
    {
        return Err(format!("{image}:latest is tagged after a failed build"));
    }
    Ok(format!("{reason}: {message}"))
}

fn good_build_still_succeeds(ns: &str) {
    let env = common::env();
    let image = env.gitea_image(&common::unique_name("after-bad"));
    env.kubectl_apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: good-src, namespace: {ns}}}\ndata: {{index.html: good}}\n---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: good, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: good-src}}]}}\n  image: {image}\n"
    ));
    let ib = ctl::wait_settled(ns, "good", SETTLE);
    assert_eq!(
        ctl::ready(&ib).map(|r| r.0).as_deref(),
        Some("True"),
        "{ib:#}"
    );
    assert_eq!(
        ctl::registry_digest(env, &image, "latest").as_deref(),
        ib["status"]["digest"].as_str()
    );
}

/// Makes the context directory a CLI case names; returns where it is (and a socket to keep open).
fn make_context(kind: &str, dir: &Path) -> (PathBuf, Option<std::os::unix::net::UnixListener>) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir).expect("context dir");
    std::fs::write(dir.join("index.html"), "<h1>hi</h1>").expect("index.html");
    match kind {
        "plain" => {}
        "newline-name" => std::fs::write(dir.join("evil\nname.txt"), "x").expect("file"),
        "invalid-utf8-name" => std::fs::write(
            dir.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name.txt")),
            "x",
        )
        .expect("file"),
        "fifo" => {
            common::run_ok(std::process::Command::new("mkfifo").arg(dir.join("pipe")));
        }
        "socket" => {
            let socket = std::os::unix::net::UnixListener::bind(dir.join("sock")).expect("socket");
            return (dir.to_owned(), Some(socket));
        }
        "escaping-symlink" => {
            std::os::unix::fs::symlink("../../etc/passwd", dir.join("passwd")).expect("symlink")
        }
        "many-files" => {
            // 100,000 files take minutes to create and delete on a slow disk: made once, kept.
            let kept = common::env().dir.join("corpus/many-files");
            if !kept.join(".complete").exists() {
                write_many_files(&kept);
            }
            return (kept, None);
        }
        "random-24mib" => {
            let mut data = vec![0u8; 24 << 20];
            fastrand::fill(&mut data);
            std::fs::write(dir.join("big.bin"), data).expect("big file");
        }
        other => panic!("unknown context kind {other}"),
    }
    (dir.to_owned(), None)
}

fn write_many_files(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    for d in 0..100 {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).expect("dir");
        for f in 0..1000 {
            std::fs::write(sub.join(format!("f{f:04}")), [b'a' + (f % 26) as u8]).expect("file");
        }
    }
    std::fs::write(dir.join(".complete"), "").expect("marker");
}

#[test]
#[ignore = "needs the real test environment or its tools: bash tests/test.sh runs it"]
fn every_bad_cli_input_exits_with_its_code_and_one_line() {
    let env = common::env();
    let traps = TlsTraps::start();
    let ca = std::fs::read(&env.gitea_ca).expect("gitea ca");
    // An ingress-like body limit in front of Gitea: 16 MiB.
    let limited = FaultProxy::start(
        &env.gitea,
        &ca,
        CertSpec::for_names(&["localhost"]),
        Plan {
            max_body: Some(16 << 20),
            lifetime: Duration::from_secs(600),
            ..Plan::default()
        },
    );
    let work = tempfile::tempdir().expect("tempdir");
    let pems = [
        ("expired", traps.expired.cert_pem.as_str()),
        ("mismatch", traps.mismatch.cert_pem.as_str()),
        ("limited", limited.cert_pem.as_str()),
    ]
    .map(|(n, pem)| robustness::write_file(work.path(), &format!("{n}.pem"), pem));
    let secrets = robustness::secrets(env);
    let cases: Vec<Case> = corpus().into_iter().filter(|c| c.kind == "cli").collect();
    let mut report = String::new();
    let mut failed = false;
    for case in &cases {
        let dir = work.path().join(&case.name);
        let (context, _socket) = make_context(&case.expect["context"], &dir.join("ctx"));
        let mut vars = vars("default", case, "", &traps);
        vars.insert("LIMITED_HOST", format!("localhost:{}", limited.port()));
        let file = robustness::write_file(&dir, "imagebuild.yaml", &substitute(&case.text, &vars));
        let mut args: Vec<String> = vec![
            "build".into(),
            "-f".into(),
            file.to_string_lossy().into(),
            "--context".into(),
            context.to_string_lossy().into(),
        ];
        let creds = [
            "--username".to_owned(),
            env.gitea_user.clone(),
            "--password-stdin".into(),
        ];
        let ca_file = |p: &Path| {
            vec![
                "--push".to_owned(),
                "--ca-file".into(),
                p.to_string_lossy().into(),
            ]
        };
        match case.expect["output"].as_str() {
            "layout" => args.extend([
                "--output".into(),
                dir.join("layout").to_string_lossy().into(),
            ]),
            "push-gitea" => {
                args.extend(ca_file(&env.gitea_ca));
                args.extend(creds.clone());
            }
            "push-expired" => args.extend(ca_file(&pems[0])),
            "push-mismatch" => args.extend(ca_file(&pems[1])),
            "push-limited" => {
                args.extend(ca_file(&pems[2]));
                args.extend(creds.clone());
            }
            other => panic!("unknown output {other}"),
        }
        let started = Instant::now();
        let out = common::output_with_stdin(
            std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
                .args(&args)
                .env_remove("SOURCE_DATE_EPOCH"),
            env.gitea_password.as_bytes(),
        );
        let took = started.elapsed();
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let expected: i32 = case.expect["exit"].parse().expect("exit code");
        let needle = &case.expect["stderr"];
        let problem = if code != expected {
            Some(format!("exit {code}, expected {expected}"))
        } else if code != 0 && error_lines(&stderr) != 1 {
            Some("stderr is not one line besides progress".into())
        } else if !stderr.contains(needle.as_str()) {
            Some(format!("stderr lacks `{needle}`"))
        } else if !robustness::leaked(&stderr, &secrets).is_empty()
            || !robustness::leaked(&String::from_utf8_lossy(&out.stdout), &secrets).is_empty()
        {
            Some("a secret in the output".into())
        } else {
            None
        };
        failed |= problem.is_some();
        report.push_str(&format!(
            "{} {} (exit {code}, {:.1}s): {}\n",
            if problem.is_some() { "FAIL" } else { "ok  " },
            case.name,
            took.as_secs_f64(),
            problem
                .map(|p| format!("{p}: {stderr}"))
                .unwrap_or(stderr.lines().last().unwrap_or("").to_owned())
        ));
    }
    eprintln!("{report}");
    assert!(!failed, "{report}");
    assert!(
        limited
            .stats
            .too_large
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the body limit was never hit"
    );
    assert!(cases.len() >= 10, "{} CLI cases", cases.len());
}

/// Lines of stderr that are not progress lines (`imagebuild: layers …`, `imagebuild: uploaded
/// …`, printed plain when stderr is not a terminal).
fn error_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| {
            !l.starts_with("imagebuild: layers ") && !l.starts_with("imagebuild: uploaded ")
        })
        .count()
}
