//! Where a registry host's requests go: `https://<host>` unless a profile says otherwise, and
//! which URLs count as that same place (credentials go nowhere else).

use reqwest::Url;

use super::error::RegistryError;

pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `https://<host>` unless configured; Docker Hub's API lives on another name than its references.
pub(crate) fn endpoint_url(host: &str, endpoint: Option<&str>) -> Result<Url, RegistryError> {
    let invalid = |detail: String| RegistryError::InvalidConfig {
        host: host.to_owned(),
        detail,
    };
    let text = match endpoint {
        Some(e) => e.trim().to_owned(),
        None if host == crate::reference::DEFAULT_REGISTRY => {
            "https://registry-1.docker.io".to_owned()
        }
        None => format!("https://{host}"),
    };
    // Never echo an endpoint that may carry credentials.
    let shown = if text.contains('@') {
        "(redacted)".to_owned()
    } else {
        text.clone()
    };
    let url = Url::parse(&text).map_err(|e| {
        invalid(format!(
            "endpoint `{shown}` is not a URL ({e}); expected e.g. https://{host} or http://service.namespace.svc:3000"
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "the endpoint URL must not contain credentials; configure them separately".to_owned(),
        ));
    }
    let text = shown;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(format!(
            "endpoint `{text}` must be an http:// or https:// URL with a host"
        )));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(invalid(format!(
            "endpoint `{text}` must not have a path or query: registries serve /v2/ at the root"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_defaults_to_https_on_the_host() {
        let url = endpoint_url("gitea.cnoe.localtest.me:8443", None).expect("url");
        assert_eq!(url.as_str(), "https://gitea.cnoe.localtest.me:8443/");
    }

    #[test]
    fn endpoint_may_be_plain_http_in_cluster() {
        let url = endpoint_url(
            "gitea.cnoe.localtest.me:8443",
            Some("http://my-gitea-http.gitea.svc.cluster.local:3000"),
        )
        .expect("url");
        assert_eq!(url.scheme(), "http");
    }

    #[test]
    fn endpoint_with_a_path_is_refused() {
        let err = endpoint_url("h", Some("https://cnoe.localtest.me:8443/gitea")).unwrap_err();
        assert_eq!(err.reason(), "InvalidRegistryConfig");
        assert!(err.to_string().contains("/v2/ at the root"), "{err}");
    }

    #[test]
    fn endpoint_with_credentials_is_refused_without_echoing_them() {
        let err = endpoint_url("h", Some("https://user:hunter2@h")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn docker_hub_references_go_to_its_api_host() {
        let url = endpoint_url("docker.io", None).expect("url");
        assert_eq!(url.host_str(), Some("registry-1.docker.io"));
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Url::parse("https://h:443/v2/x").expect("url");
        assert!(same_origin(&a, &Url::parse("https://h/").expect("url")));
        assert!(!same_origin(&a, &Url::parse("http://h:443/").expect("url")));
        assert!(!same_origin(
            &a,
            &Url::parse("https://other/").expect("url")
        ));
    }
}
