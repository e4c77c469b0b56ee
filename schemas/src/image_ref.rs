//! Image references as records spell them: `registry`, `repository` and `tag` of a reference
//! as written in a pod spec or a scanner report, with Docker Hub's defaults made explicit, so a
//! scan and the pods running its image meet on the same names.

/// (registry, repository, tag) of an image reference, Docker Hub defaults applied.
pub fn split_reference(reference: &str) -> (String, String, Option<String>) {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let (first, rest) = match without_digest.split_once('/') {
        Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
            (f.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), without_digest.to_string()),
    };
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t.to_string())),
        _ => (rest, None),
    };
    let repo = if first == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    (first, repo, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_like_docker() {
        assert_eq!(
            split_reference("nginx"),
            ("docker.io".into(), "library/nginx".into(), None)
        );
        assert_eq!(
            split_reference("localhost:5000/app:v1"),
            ("localhost:5000".into(), "app".into(), Some("v1".into()))
        );
        assert_eq!(
            split_reference("bitnami/redis:7@sha256:ab"),
            ("docker.io".into(), "bitnami/redis".into(), Some("7".into()))
        );
    }
}
