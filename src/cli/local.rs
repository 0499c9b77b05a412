//! Commands on the local image store: `images`, `tag` (of a local name), `rmi`, `save`.

use std::path::Path;

use super::{Failure, OutputFlags, print_json, size};
use crate::reference::ImageRef;
use crate::store::{Store, StoredImage, image_name};

/// `imagebuild images`: one line per name (name, short digest, size, created, platforms), or
/// with `--output-format json` the list of [`StoredImage`].
pub fn images(out: &OutputFlags) -> Result<(), Failure> {
    let images = Store::open_default()?.images()?;
    if out.json() {
        return print_json(&images);
    }
    print!("{}", images_table(&images));
    Ok(())
}

/// The text form of `imagebuild images`: a header, then one aligned row per name.
pub fn images_table(images: &[StoredImage]) -> String {
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|image| {
            [
                image.name.clone(),
                short_digest(&image.digest),
                size::decimal(image.size),
                image.created.clone().unwrap_or_else(|| "-".into()),
                image.platforms.join(","),
            ]
        })
        .collect();
    let header = ["NAME", "DIGEST", "SIZE", "CREATED", "PLATFORMS"].map(str::to_owned);
    let widths: Vec<usize> = (0..5)
        .map(|column| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|row| row[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}

/// `sha256:` and the first 12 hex digits.
fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// `imagebuild tag SOURCE TARGET` on the local store: TARGET is a full name, or a tag of
/// SOURCE's repository.
pub fn tag(store: &Store, source: &str, target: &str, out: &OutputFlags) -> Result<(), Failure> {
    let target = if target.contains('/') {
        image_name(target)?
    } else {
        let source = ImageRef::parse(&image_name(source)?)
            .map_err(|e| Failure::input(format!("`{source}`: {e}")))?;
        image_name(&format!(
            "{}/{}:{target}",
            source.registry, source.repository
        ))?
    };
    let digest = store.tag(source, &target)?;
    out.note(format_args!("tagged {target} (local)"));
    println!("{digest}");
    Ok(())
}

/// `imagebuild rmi NAME`: removes the name, then the blobs no other name needs.
pub fn remove_image(name: &str, out: &OutputFlags) -> Result<(), Failure> {
    let removed = Store::open_default()?.remove(name)?;
    out.note(format_args!(
        "deleted {} blobs ({}) no other name used",
        removed.blobs_deleted,
        size::decimal(removed.bytes_freed)
    ));
    println!("untagged {} ({})", removed.name, removed.digest);
    Ok(())
}

/// `imagebuild save NAME -o FILE.tar`: an OCI archive of the one image.
pub fn save(name: &str, archive: &Path, out: &OutputFlags) -> Result<(), Failure> {
    let digest = Store::open_default()?.save(name, archive)?;
    out.note(format_args!("wrote {name} to {}", archive.display()));
    println!("{digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, size: u64, platforms: &[&str]) -> StoredImage {
        StoredImage {
            name: name.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size,
            created: Some("1970-01-01T00:00:00Z".into()),
            platforms: platforms.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn images_are_an_aligned_table_with_short_digests_and_readable_sizes() {
        let table = images_table(&[
            stored("h.example/me/app:v1", 512, &["linux/amd64"]),
            stored(
                "h.example/me/app-index:v1",
                2_345_678,
                &["linux/amd64", "linux/arm64"],
            ),
        ]);
        assert_eq!(
            table,
            "NAME                       DIGEST               SIZE    CREATED               PLATFORMS\n\
             h.example/me/app:v1        sha256:abababababab  512 B   1970-01-01T00:00:00Z  linux/amd64\n\
             h.example/me/app-index:v1  sha256:abababababab  2.3 MB  1970-01-01T00:00:00Z  linux/amd64,linux/arm64\n"
        );
    }

    #[test]
    fn images_as_json_have_the_fields_scripts_read() {
        let json = serde_json::to_value([stored("h.example/me/app:v1", 512, &["linux/amd64"])])
            .expect("json");
        assert_eq!(
            json,
            serde_json::json!([{
                "name": "h.example/me/app:v1",
                "digest": format!("sha256:{}", "ab".repeat(32)),
                "size": 512,
                "created": "1970-01-01T00:00:00Z",
                "platforms": ["linux/amd64"],
            }])
        );
    }

    #[test]
    fn a_build_report_as_json_has_digest_size_and_refs() {
        let report = super::super::BuildReport {
            digest: "sha256:00".into(),
            size: 7,
            refs: vec!["h.example/me/app:v1".into()],
        };
        assert_eq!(
            serde_json::to_value(&report).expect("json"),
            serde_json::json!({"digest": "sha256:00", "size": 7, "refs": ["h.example/me/app:v1"]})
        );
    }
}
