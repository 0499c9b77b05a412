//! `imagebuild build DIR -t REF ...`: the flags that make an ImageBuild spec (or override the
//! one of `-f FILE`), so a build from flags runs exactly the builder an ImageBuild file does and
//! the same inputs give the same digest.

use clap::Args;

use crate::api::{EnvVar, ImageBuildSpec, ImageConfig};
use crate::reference::{ImageRef, ReferenceError};

/// The spec flags of `imagebuild build`. Given with `-f FILE`, each overrides the file: `-t`
/// its image and tags, lists (`--exclude`, `--port`, `--platform`) replace the file's, and
/// `--label`, `--annotation`, `--env` add to the file's (a flag wins for the same key).
#[derive(Args, Debug, Clone, Default)]
pub struct SpecFlags {
    /// Image name and tag, host/owner/name:tag (tag default `latest`); repeat for more tags of
    /// the same repository.
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub tags: Vec<String>,
    /// Base image, e.g. docker.io/library/nginx:1.27 (default: scratch, only the files).
    #[arg(long, value_name = "BASE")]
    pub from: Option<String>,
    /// Files to leave out, in .dockerignore syntax (repeatable; DIR/.dockerignore counts too).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Image label (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Manifest annotation (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// What a container runs: a JSON array (["/bin/server","-p","80"]) or words split at spaces.
    #[arg(long, value_name = "COMMAND")]
    pub entrypoint: Option<String>,
    /// Environment variable of the image (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User a container runs as.
    #[arg(long)]
    pub user: Option<String>,
    /// Working directory of a container.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Exposed port, e.g. 8080/tcp (repeatable).
    #[arg(long, value_name = "PORT/PROTOCOL")]
    pub port: Vec<String>,
    /// os/arch[/variant]; once: one image (spec.platform), repeated: an image index
    /// (spec.platforms).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Vec<String>,
    /// Directory inside the image where the files land (default /).
    #[arg(long, value_name = "/PATH")]
    pub destination_path: Option<String>,
    /// auto: one layer under 64 MiB, else up to 16 layers so that one changed file changes one
    /// layer; single: one layer whatever the size (spec.layers).
    #[arg(long, value_name = "auto|single", value_parser = ["auto", "single"])]
    pub layers: Option<String>,
}

/// A flag value that cannot become part of a spec.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecFlagError {
    #[error("name the image with -t host/owner/name:tag (or give an ImageBuild file with -f FILE)")]
    NoImage,
    #[error("-t `{value}`: {source}")]
    Reference {
        value: String,
        source: ReferenceError,
    },
    #[error("-t `{value}` names a digest; give a tag, e.g. -t {repository}:latest")]
    Digest { value: String, repository: String },
    #[error(
        "-t `{second}` is in another repository than -t `{first}`; one build has one repository (tag it into another with imagebuild tag)"
    )]
    TwoRepositories { first: String, second: String },
    #[error("--{flag} `{value}`: expected KEY=VALUE")]
    KeyValue { flag: &'static str, value: String },
    #[error("--entrypoint `{value}`: not a JSON array of strings: {reason}")]
    Entrypoint { value: String, reason: String },
}

impl SpecFlags {
    /// The spec these flags make, on top of `file` (an ImageBuild file's spec) when given.
    pub fn apply(&self, file: Option<ImageBuildSpec>) -> Result<ImageBuildSpec, SpecFlagError> {
        let mut spec = match (file, self.tags.is_empty()) {
            (Some(spec), _) => spec,
            (None, true) => return Err(SpecFlagError::NoImage),
            (None, false) => ImageBuildSpec::default(),
        };
        if let Some((image, tags)) = self.image_and_tags()? {
            spec.image = image;
            spec.tags = tags;
        }
        if let Some(from) = &self.from {
            spec.from = Some(from.clone());
        }
        if !self.exclude.is_empty() {
            spec.exclude = self.exclude.clone();
        }
        spec.annotations
            .extend(pairs("annotation", &self.annotation)?);
        match self.platform.as_slice() {
            [] => {}
            [one] => {
                spec.platform = Some(one.clone());
                spec.platforms = None;
            }
            many => {
                spec.platform = None;
                spec.platforms = Some(many.to_vec());
            }
        }
        if let Some(path) = &self.destination_path {
            spec.destination_path = Some(path.clone());
        }
        match self.layers.as_deref() {
            Some("single") => spec.layers = crate::api::Layers::Single,
            Some(_) => spec.layers = crate::api::Layers::Auto,
            None => {}
        }
        spec.config = self.config(spec.config.take())?;
        Ok(spec)
    }

    /// `spec.image` and `spec.tags` from the `-t` flags, when there are any.
    fn image_and_tags(&self) -> Result<Option<(String, Vec<String>)>, SpecFlagError> {
        let mut image: Option<(String, &str)> = None;
        let mut tags: Vec<String> = Vec::new();
        for value in &self.tags {
            let reference = ImageRef::parse(value).map_err(|source| SpecFlagError::Reference {
                value: value.clone(),
                source,
            })?;
            let repository = format!("{}/{}", reference.registry, reference.repository);
            if reference.digest.is_some() {
                return Err(SpecFlagError::Digest {
                    value: value.clone(),
                    repository,
                });
            }
            match &image {
                Some((first, first_value)) if *first != repository => {
                    return Err(SpecFlagError::TwoRepositories {
                        first: (*first_value).to_owned(),
                        second: value.clone(),
                    });
                }
                Some(_) => {}
                None => image = Some((repository, value.as_str())),
            }
            let tag = reference.tag.unwrap_or_else(|| "latest".to_owned());
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(image.map(|(image, _)| (image, tags)))
    }

    /// The image configuration: the file's, with the flags' values over it. `None` when neither
    /// sets anything, as an ImageBuild without `config` has it.
    fn config(&self, file: Option<ImageConfig>) -> Result<Option<ImageConfig>, SpecFlagError> {
        let sets_config = self.entrypoint.is_some()
            || self.user.is_some()
            || self.workdir.is_some()
            || !self.env.is_empty()
            || !self.label.is_empty()
            || !self.port.is_empty();
        if !sets_config {
            return Ok(file);
        }
        let mut config = file.unwrap_or_default();
        if let Some(entrypoint) = &self.entrypoint {
            config.entrypoint = Some(command(entrypoint)?);
        }
        if let Some(user) = &self.user {
            config.user = Some(user.clone());
        }
        if let Some(dir) = &self.workdir {
            config.working_dir = Some(dir.clone());
        }
        for (name, value) in pairs("env", &self.env)? {
            match config.env.iter_mut().find(|e| e.name == name) {
                Some(existing) => existing.value = value,
                None => config.env.push(EnvVar { name, value }),
            }
        }
        config.labels.extend(pairs("label", &self.label)?);
        if !self.port.is_empty() {
            config.exposed_ports = self.port.clone();
        }
        Ok(Some(config))
    }
}

/// `KEY=VALUE` flag values, in the order given (the order of `env` is part of the image).
fn pairs(flag: &'static str, values: &[String]) -> Result<Vec<(String, String)>, SpecFlagError> {
    values
        .iter()
        .map(|value| match value.split_once('=') {
            Some((key, v)) if !key.is_empty() => Ok((key.to_owned(), v.to_owned())),
            _ => Err(SpecFlagError::KeyValue {
                flag,
                value: value.clone(),
            }),
        })
        .collect()
}

/// A JSON array of strings, or words split at spaces.
fn command(value: &str) -> Result<Vec<String>, SpecFlagError> {
    if value.trim_start().starts_with('[') {
        return serde_json::from_str(value).map_err(|e| SpecFlagError::Entrypoint {
            value: value.to_owned(),
            reason: e.to_string(),
        });
    }
    Ok(value.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(tags: &[&str]) -> SpecFlags {
        SpecFlags {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..SpecFlags::default()
        }
    }

    /// The spec of an ImageBuild file's YAML, without its context (flags name a directory).
    fn file_spec(yaml: &str) -> ImageBuildSpec {
        let value = crate::yaml::documents(yaml)
            .remove(0)
            .expect("ImageBuild YAML");
        let build: crate::api::ImageBuild = serde_json::from_value(value).expect("ImageBuild");
        ImageBuildSpec {
            context: Default::default(),
            ..build.spec
        }
    }

    #[test]
    fn tags_of_one_repository_become_image_and_tags() {
        let spec = flags(&["h.example:8443/me/app:v1", "h.example:8443/me/app:v2"])
            .apply(None)
            .expect("spec");
        assert_eq!(spec.image, "h.example:8443/me/app");
        assert_eq!(spec.tags, ["v1", "v2"]);
        let spec = flags(&["h.example:8443/me/app"]).apply(None).expect("spec");
        assert_eq!(spec.tags, ["latest"]);
    }

    #[test]
    fn tags_of_two_repositories_or_a_digest_or_none_are_refused() {
        assert_eq!(
            flags(&["h.example/me/a:1", "h.example/me/b:1"]).apply(None),
            Err(SpecFlagError::TwoRepositories {
                first: "h.example/me/a:1".into(),
                second: "h.example/me/b:1".into()
            })
        );
        let digest = format!("h.example/me/a@sha256:{}", "0".repeat(64));
        let refused = flags(&[&digest]).apply(None).expect_err("digest");
        assert_eq!(
            refused.to_string(),
            format!("-t `{digest}` names a digest; give a tag, e.g. -t h.example/me/a:latest")
        );
        assert_eq!(flags(&[]).apply(None), Err(SpecFlagError::NoImage));
    }

    #[test]
    fn every_flag_lands_where_the_image_build_file_puts_it() {
        let given = SpecFlags {
            tags: vec!["h.example/me/app:v1".into(), "h.example/me/app:v2".into()],
            from: Some("h.example/me/base:1".into()),
            exclude: vec!["*.md".into(), "!README.md".into()],
            label: vec!["team=web".into()],
            annotation: vec!["org.opencontainers.image.source=https://x.example".into()],
            entrypoint: Some(r#"["/bin/server","--port=80"]"#.into()),
            env: vec!["MODE=prod".into(), "EMPTY=".into()],
            user: Some("1000".into()),
            workdir: Some("/srv".into()),
            port: vec!["80/tcp".into()],
            platform: vec!["linux/amd64".into(), "linux/arm64".into()],
            destination_path: Some("/srv/www".into()),
            layers: Some("single".into()),
        };
        let expected = file_spec(
            r#"apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {name: app}
spec:
  context: {configMaps: [{name: site}]}
  image: h.example/me/app
  tags: [v1, v2]
  from: h.example/me/base:1
  exclude: ["*.md", "!README.md"]
  annotations: {org.opencontainers.image.source: "https://x.example"}
  platforms: [linux/amd64, linux/arm64]
  destinationPath: /srv/www
  layers: single
  config:
    entrypoint: [/bin/server, --port=80]
    env: [{name: MODE, value: prod}, {name: EMPTY, value: ""}]
    user: "1000"
    workingDir: /srv
    exposedPorts: [80/tcp]
    labels: {team: web}
"#,
        );
        assert_eq!(given.apply(None).expect("spec"), expected);
    }

    #[test]
    fn one_platform_is_spec_platform_and_words_make_an_entrypoint() {
        let given = SpecFlags {
            platform: vec!["linux/arm64".into()],
            entrypoint: Some("/bin/server --port 80".into()),
            ..flags(&["h.example/me/app"])
        };
        let spec = given.apply(None).expect("spec");
        assert_eq!(spec.platform.as_deref(), Some("linux/arm64"));
        assert_eq!(spec.platforms, None);
        assert_eq!(
            spec.config.and_then(|c| c.entrypoint),
            Some(vec!["/bin/server".into(), "--port".into(), "80".into()])
        );
    }

    #[test]
    fn flags_override_the_file_and_add_to_its_maps() {
        let file = file_spec(
            r#"apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {name: app}
spec:
  context: {configMaps: [{name: site}]}
  image: h.example/me/app
  tags: [old]
  platform: linux/amd64
  exclude: ["*.tmp"]
  config:
    env: [{name: MODE, value: dev}, {name: KEEP, value: "1"}]
    labels: {team: web}
"#,
        );
        let given = SpecFlags {
            env: vec!["MODE=prod".into()],
            label: vec!["tier=front".into()],
            exclude: vec!["*.md".into()],
            platform: vec!["linux/amd64".into(), "linux/arm64".into()],
            ..flags(&["h.example/other/app:new"])
        };
        let spec = given.apply(Some(file)).expect("spec");
        assert_eq!(spec.image, "h.example/other/app");
        assert_eq!(spec.tags, ["new"]);
        assert_eq!(spec.platform, None);
        assert_eq!(spec.exclude, ["*.md"]);
        let config = spec.config.expect("config");
        let env: Vec<_> = config.env.iter().map(|e| (&*e.name, &*e.value)).collect();
        assert_eq!(env, [("MODE", "prod"), ("KEEP", "1")]);
        assert_eq!(config.labels.len(), 2);
    }

    #[test]
    fn a_file_alone_is_left_as_it_is() {
        let file = file_spec(
            "apiVersion: imagebuild.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: a}\nspec:\n  context: {configMaps: [{name: s}]}\n  image: h.example/me/app\n",
        );
        assert_eq!(SpecFlags::default().apply(Some(file.clone())), Ok(file));
    }

    #[test]
    fn malformed_values_name_their_flag() {
        let given = SpecFlags {
            label: vec!["no-equals".into()],
            ..flags(&["h.example/me/app"])
        };
        assert_eq!(
            given.apply(None).expect_err("label").to_string(),
            "--label `no-equals`: expected KEY=VALUE"
        );
        let given = SpecFlags {
            entrypoint: Some("[/bin/sh".into()),
            ..flags(&["h.example/me/app"])
        };
        assert!(
            given
                .apply(None)
                .expect_err("entrypoint")
                .to_string()
                .starts_with("--entrypoint `[/bin/sh`: not a JSON array of strings")
        );
    }
}
