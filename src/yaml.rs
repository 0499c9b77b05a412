//! YAML reading for build files and the controller's configuration. serde-saphyr replaced the
//! deprecated serde_yaml; these options keep what serde_yaml read from a plain scalar, so a file
//! that worked before means the same now.

use serde::de::DeserializeOwned;

/// serde-saphyr's defaults, less the YAML 1.1 habits serde_yaml (YAML 1.2 core schema) did not
/// have: `yes`/`on`/`y` stay strings instead of booleans (a ConfigMap value `on` would otherwise
/// be refused as "not a string"), and `0755` or `1_000` stay strings where the type is open.
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    }
}

/// One YAML document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// Each non-empty document of a multi-document stream, in order, as JSON values (ordered
/// objects), so the caller can pick the type from `kind`. The first error is the last item.
pub fn documents(text: &str) -> Vec<Result<serde_json::Value, serde_saphyr::Error>> {
    // The streaming reader yields one item per document, so an error can name its document;
    // the `&str` entry points only return the whole stream or its first error.
    let mut bytes = text.as_bytes();
    let mut items = Vec::new();
    for item in serde_saphyr::read_with_options(&mut bytes, options()) {
        let failed = item.is_err();
        items.push(item);
        if failed {
            break;
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_read_as_serde_yaml_read_them() {
        let value: serde_json::Value =
            from_str("a: yes\nb: on\nc: 0755\nd: 1_000\ne: true\nf: 12\ng: ~\n").expect("YAML");
        assert_eq!(
            value,
            serde_json::json!({"a": "yes", "b": "on", "c": "0755", "d": "1_000", "e": true,
                "f": 12, "g": null})
        );
    }

    #[test]
    fn documents_come_in_order_and_empty_ones_are_skipped() {
        let docs: Vec<serde_json::Value> = documents("---\nkind: A\n---\n---\nkind: B\n")
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("YAML");
        assert_eq!(
            docs,
            vec![
                serde_json::json!({"kind": "A"}),
                serde_json::json!({"kind": "B"})
            ]
        );
    }

    #[test]
    fn a_syntax_error_ends_the_documents_with_its_line() {
        let docs = documents("kind: A\n---\nkind: [B\n");
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert!(docs[0].is_ok());
        let err = docs[1].as_ref().expect_err("syntax error");
        assert!(err.to_string().contains("line"), "{err}");
    }
}
