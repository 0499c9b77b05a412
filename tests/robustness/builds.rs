//! Builds whose outcome is known in advance: the files of each (deterministic from a seed), the
//! ImageBuild and ConfigMap that carry them, the digest a clean CLI build of the same inputs
//! gives, and the check every fault and restart scenario ends with (Ready, that digest in status
//! and in Gitea, exactly the requested tags, every blob intact).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;
use crate::controller_support as ctl;

/// How long a scenario's builds may take to settle once the faults are over.
pub const SETTLE: Duration = Duration::from_secs(420);

/// One build: its files (deterministic from the seed) and the ImageBuild.
pub struct Build {
    pub name: String,
    pub image: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Spec lines added after `image` and `tags` (indented two spaces), e.g. annotations.
    pub extra_spec: String,
}

impl Build {
    /// A build with about 200 KiB of incompressible data: a real upload that can break mid-body.
    pub fn new(prefix: &str, seed: u64) -> Self {
        Self::sized(prefix, seed, 200 << 10)
    }

    /// A build whose layer holds `bytes` of incompressible data (a ConfigMap holds at most
    /// 1 MiB, so at most about 700 KiB).
    pub fn sized(prefix: &str, seed: u64, bytes: usize) -> Self {
        let env = common::env();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut big = vec![0u8; bytes];
        rng.fill(&mut big);
        let files = BTreeMap::from([
            (
                "index.html".to_owned(),
                format!("build {seed}").into_bytes(),
            ),
            ("data.bin".to_owned(), big),
        ]);
        Self {
            name: format!("{prefix}-{seed}"),
            image: env.gitea_image(&common::unique_name(prefix)),
            files,
            extra_spec: String::new(),
        }
    }

    /// Changes one file of the context (apply the manifests again to hand it to the cluster).
    pub fn set_file(&mut self, name: &str, content: &[u8]) {
        self.files.insert(name.to_owned(), content.to_vec());
    }

    fn spec(&self) -> String {
        format!(
            "  image: {}\n  tags: [latest, v1]\n{}",
            self.image, self.extra_spec
        )
    }

    /// The ConfigMap and the ImageBuild, for `kubectl apply -f -`.
    pub fn manifests(&self, ns: &str) -> String {
        use base64::Engine;
        let data: String = self
            .files
            .iter()
            .map(|(k, v)| {
                format!(
                    "  {k}: {}\n",
                    base64::engine::general_purpose::STANDARD.encode(v)
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-src, namespace: {ns}}}\nbinaryData:\n{data}---\napiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  context: {{configMaps: [{{name: {name}-src}}]}}\n{spec}---\n",
            name = self.name,
            spec = self.spec()
        )
    }

    /// The digest of the same build made by the CLI into a layout: no registry, no faults.
    pub fn clean_digest(&self, work: &Path) -> String {
        let dir = work.join(&self.name);
        let context = dir.join("ctx");
        std::fs::create_dir_all(&context).expect("dir");
        for (k, v) in &self.files {
            std::fs::write(context.join(k), v).expect("file");
        }
        let file = super::write_file(
            &dir,
            "ib.yaml",
            &format!(
                "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {{name: {}}}\nspec:\n  context: {{persistentVolumeClaim: {{claimName: unused}}}}\n{}",
                self.name,
                self.spec()
            ),
        );
        let layout = dir.join("layout");
        common::run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_imagebuild"))
                .env_remove("SOURCE_DATE_EPOCH")
                .args(["build", "-f"])
                .arg(&file)
                .arg("--context")
                .arg(&context)
                .arg("--output")
                .arg(&layout),
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("index json");
        index["manifests"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }
}

/// Server-side apply: client-side apply would copy the data into an annotation, over its limit.
pub fn apply(manifests: &str) {
    let out = common::env().kubectl_stdin(&["apply", "--server-side", "-f", "-"], manifests);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tags Gitea lists for `image`.
pub fn tags(image: &str) -> Vec<String> {
    let env = common::env();
    let certs = env.cert_dir(&env.gitea_ca);
    let out = common::run_ok(env.cmd("skopeo").args([
        "list-tags",
        "--cert-dir",
        &certs.path().to_string_lossy(),
        "--creds",
        &env.gitea_creds(),
        &format!("docker://{image}"),
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("tags json");
    let mut tags: Vec<String> = json["Tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// Waits for every build to be Ready and checks digest, tags and content against a clean build.
/// Returns the attempts each took.
pub fn assert_all_ready_with_clean_digests(ns: &str, builds: &[Build]) -> Vec<u64> {
    let env = common::env();
    let work = tempfile::tempdir().expect("tempdir");
    let deadline = Instant::now() + SETTLE;
    let mut attempts = Vec::new();
    for build in builds {
        let left = deadline.saturating_duration_since(Instant::now());
        let ib = ctl::wait_for(ns, &build.name, left, |ib| {
            ib["status"]["phase"] == "Succeeded"
                && ib["status"]["observedGeneration"] == ib["metadata"]["generation"]
        });
        let digest = ib["status"]["digest"].as_str().expect("digest").to_owned();
        assert_eq!(
            digest,
            build.clean_digest(work.path()),
            "{}: not the clean build's digest",
            build.name
        );
        for tag in ["latest", "v1"] {
            assert_eq!(
                ctl::registry_digest(env, &build.image, tag).as_deref(),
                Some(digest.as_str()),
                "{}: Gitea serves another manifest for {tag}",
                build.name
            );
        }
        assert_eq!(tags(&build.image), ["latest", "v1"], "{}: tags", build.name);
        attempts.push(ib["status"]["attempts"].as_u64().unwrap_or(1));
    }
    // Every blob arrives intact: skopeo verifies each digest as it copies.
    for build in builds.iter().step_by(5) {
        let digest = ctl::registry_digest(env, &build.image, "latest").expect("digest");
        drop(ctl::pull_and_unpack(
            env,
            &format!("{}@{digest}", build.image),
        ));
    }
    attempts
}
