//! Keeps secrets inside ingest.
//!
//! Secret `data`/`stringData` values, container env values, ConfigMap values under secret-like
//! keys and `last-applied-configuration` annotations are replaced by a keyed hash
//! (`hmac-sha256:<hex>`), so equal values can still be correlated but never read back.
//!
//! So are secrets on a command line: an exec's `requestURI` carries its arguments as `command`
//! query parameters, and people do type `mysql --password=...`, `env API_TOKEN=... cmd` or
//! `curl -H 'Authorization: Bearer ...'`. The argument's shape stays (the flag, the variable's
//! name, the scheme); only the value is hashed, so rules still see which program ran with what.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Annotation that carries a full copy of the applied object, secrets included.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Key names whose ConfigMap values are treated as secret.
const SECRET_LIKE: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "credential",
    "private",
    "key",
    "auth",
    "cert",
];

/// Replaces secret values with keyed hashes.
#[derive(Clone)]
pub struct Sanitizer {
    key: Vec<u8>,
}

impl Sanitizer {
    /// A sanitizer with a fixed key (from `ingest.redaction_key`).
    pub fn new(key: &[u8]) -> Self {
        Sanitizer { key: key.to_vec() }
    }

    /// A sanitizer with a random per-process key.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        // The std hasher is randomly seeded per process; enough for a per-run redaction key.
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        Sanitizer { key: key.to_vec() }
    }

    /// The sanitizer `[ingest]` asks for: keyed by `redaction_key`, else random per process.
    pub fn for_settings(settings: &crate::IngestSettings) -> Self {
        match &settings.redaction_key {
            Some(k) => Sanitizer::new(k.as_bytes()),
            None => {
                tracing::warn!(
                    "ingest.redaction_key is not set: secret hashes are keyed per process and will not match across restarts"
                );
                Sanitizer::random()
            }
        }
    }

    /// `hmac-sha256:<hex>` of a value.
    pub fn hash(&self, value: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(value.as_bytes());
        format!(
            "hmac-sha256:{}",
            hex::encode(&mac.finalize().into_bytes()[..16])
        )
    }

    /// Sanitises a Kubernetes object (a request body or a watched object).
    pub fn sanitize_object(&self, resource: Option<&str>, mut obj: Value) -> Value {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let is_secret = kind == "Secret" || resource == Some("secrets");
        let is_configmap = kind == "ConfigMap" || resource == Some("configmaps");
        if let Some(map) = obj.as_object_mut() {
            if is_secret {
                for field in ["data", "stringData"] {
                    if let Some(Value::Object(values)) = map.get_mut(field) {
                        for v in values.values_mut() {
                            *v = Value::String(self.hash(&value_text(v)));
                        }
                    }
                }
            }
            if is_configmap {
                for field in ["data", "binaryData"] {
                    if let Some(Value::Object(values)) = map.get_mut(field) {
                        for (k, v) in values.iter_mut() {
                            if is_secret_like(k) {
                                *v = Value::String(self.hash(&value_text(v)));
                            }
                        }
                    }
                }
            }
        }
        self.scrub(&mut obj);
        obj
    }

    /// Hashes the secrets in a request URI's query: values of secret-like parameters, and
    /// secrets inside `command` arguments (see the module docs). Parameters with nothing to
    /// hide are kept byte for byte.
    pub fn sanitize_request_uri<'a>(&self, uri: &'a str) -> Cow<'a, str> {
        let Some((path, query)) = uri.split_once('?') else {
            return Cow::Borrowed(uri);
        };
        let mut changed = false;
        let mut line = CommandLine::default();
        let pairs: Vec<Cow<str>> = query
            .split('&')
            .map(|raw| {
                let Some((name, value)) = form_urlencoded::parse(raw.as_bytes()).next() else {
                    return Cow::Borrowed(raw);
                };
                let clean = if name == "command" {
                    self.sanitize_arg(&mut line, &value)
                } else if is_secret_like(&name) {
                    Some(self.hash(&value))
                } else {
                    None
                };
                match clean {
                    Some(clean) => {
                        changed = true;
                        Cow::Owned(
                            form_urlencoded::Serializer::new(String::new())
                                .append_pair(&name, &clean)
                                .finish(),
                        )
                    }
                    None => Cow::Borrowed(raw),
                }
            })
            .collect();
        if !changed {
            return Cow::Borrowed(uri);
        }
        Cow::Owned(format!("{path}?{}", pairs.join("&")))
    }

    /// One command-line argument with its secrets hashed, or `None` when it shows none. An
    /// argument with spaces (`sh -c '...'`) is read word by word.
    fn sanitize_arg(&self, line: &mut CommandLine, arg: &str) -> Option<String> {
        let authorized = self.hash_credentials(arg);
        let text = authorized.as_deref().unwrap_or(arg);
        if !text.contains(char::is_whitespace) {
            return self.sanitize_word(line, text).or(authorized);
        }
        let mut changed = authorized.is_some();
        let words: Vec<String> = text
            .split(char::is_whitespace)
            .map(|w| match self.sanitize_word(line, w) {
                Some(clean) => {
                    changed = true;
                    clean
                }
                None => w.to_string(),
            })
            .collect();
        changed.then(|| words.join(" "))
    }

    /// Hashes the credentials after each `Bearer ` or `Basic ` (an `Authorization` header).
    fn hash_credentials(&self, arg: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = arg;
        while let Some((at, scheme)) = ["Bearer ", "Basic ", "bearer ", "basic "]
            .iter()
            .filter_map(|scheme| rest.find(scheme).map(|at| (at, scheme.len())))
            .min()
        {
            let start = at + scheme;
            let end = rest[start..]
                .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .map_or(rest.len(), |n| start + n);
            out.push_str(&rest[..start]);
            if end > start {
                out.push_str(&self.hash(&rest[start..end]));
            }
            rest = &rest[end..];
        }
        (!out.is_empty()).then(|| out + rest)
    }

    /// One word of a command line with its secret hashed, or `None` when it shows none.
    fn sanitize_word(&self, line: &mut CommandLine, word: &str) -> Option<String> {
        let previous = line.previous.replace(word.to_string());
        if MYSQL_CLIENTS.contains(&program_name(word)) {
            line.mysql = true;
        }
        // The value of a bare secret flag: `--password hunter2`.
        if previous.is_some_and(|p| !p.contains('=') && is_secret_flag(&p)) {
            return Some(self.hash(word));
        }
        // `--password=hunter2`, `PGPASSWORD=hunter2`.
        if let Some((name, value)) = word.split_once('=')
            && !value.is_empty()
            && (is_secret_flag(name) || is_variable(name) && is_secret_like(name))
        {
            return Some(format!("{name}={}", self.hash(value)));
        }
        // A password in a URL: `postgres://app:hunter2@db/app`.
        if let Some(scheme_end) = word.find("://") {
            let authority_start = scheme_end + 3;
            let authority_end = word[authority_start..]
                .find(['/', '?', '#'])
                .map_or(word.len(), |n| authority_start + n);
            let authority = &word[authority_start..authority_end];
            if let Some(at) = authority.rfind('@')
                && let Some(colon) = authority[..at].find(':')
            {
                let (from, to) = (authority_start + colon + 1, authority_start + at);
                return Some(format!(
                    "{}{}{}",
                    &word[..from],
                    self.hash(&word[from..to]),
                    &word[to..]
                ));
            }
        }
        // MySQL's attached password: `mysql -phunter2`.
        if line.mysql
            && let Some(value) = word.strip_prefix("-p")
            && !value.is_empty()
        {
            return Some(format!("-p{}", self.hash(value)));
        }
        None
    }

    /// Sanitises a whole raw audit event (used before dead-lettering one that did not parse).
    pub fn sanitize_audit_json(&self, mut event: Value) -> Value {
        let resource = event
            .pointer("/objectRef/resource")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(map) = event.as_object_mut() {
            if let Some(Value::String(uri)) = map.get_mut("requestURI")
                && let Cow::Owned(clean) = self.sanitize_request_uri(uri)
            {
                *uri = clean;
            }
            for field in ["requestObject", "responseObject"] {
                if let Some(v) = map.remove(field) {
                    map.insert(
                        field.to_string(),
                        self.sanitize_object(resource.as_deref(), v),
                    );
                }
            }
        }
        event
    }

    /// Sanitises a request body that was refused, before it is dead-lettered: structurally when
    /// it is JSON, else by blanking the values of secret-bearing keys in the text (a truncated
    /// body can still hold a Secret's `data`).
    pub fn sanitize_rejected_body(&self, body: &[u8]) -> Vec<u8> {
        if let Ok(mut v) = serde_json::from_slice::<Value>(body) {
            match v.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => {
                    let clean: Vec<Value> = items
                        .into_iter()
                        .map(|i| self.sanitize_audit_json(self.sanitize_object(None, i)))
                        .collect();
                    if let Some(map) = v.as_object_mut() {
                        map.insert("items".into(), Value::Array(clean));
                    }
                    let v = self.sanitize_object(None, v);
                    return serde_json::to_vec(&v).unwrap_or_default();
                }
                Some(other) => {
                    if let Some(map) = v.as_object_mut() {
                        map.insert("items".into(), other);
                    }
                }
                None => {}
            }
            let v = self.sanitize_audit_json(self.sanitize_object(None, v));
            return serde_json::to_vec(&v).unwrap_or_default();
        }
        self.sanitize_uris_in_text(&redact_text(body, TEXT_SECRET_KEYS))
    }

    /// Sanitises each `"requestURI"` string in text that is not valid JSON. A value that cannot
    /// be read as a JSON string (cut inside an escape, say) is blanked instead.
    fn sanitize_uris_in_text(&self, body: &[u8]) -> Vec<u8> {
        rewrite_values(body, &["\"requestURI\""], |raw| {
            if !raw.starts_with(b"\"") {
                // Not a string: whatever it holds is read on.
                return self.sanitize_uris_in_text(raw);
            }
            // A string cut off by the truncation is read as if it were closed there.
            let closed = raw.len() > 1 && raw.ends_with(b"\"");
            let mut text = raw.to_vec();
            if !closed {
                text.push(b'"');
            }
            match serde_json::from_slice::<String>(&text) {
                Ok(uri) => {
                    let mut clean = serde_json::to_string(&self.sanitize_request_uri(&uri))
                        .unwrap_or_default()
                        .into_bytes();
                    if !closed {
                        clean.pop();
                    }
                    clean
                }
                Err(_) => REDACTED.to_vec(),
            }
        })
    }

    /// Sanitises a scanner report that was refused: Trivy's secret scanner puts the secrets it
    /// found (`Secrets[].Match`, `Code.Lines[].Content`) into the report, so those go.
    pub fn sanitize_scan_report(&self, body: &[u8]) -> Vec<u8> {
        fn drop_secret_findings(v: &mut Value) {
            match v {
                Value::Object(map) => {
                    for key in SCAN_SECRET_KEYS {
                        map.remove(*key);
                    }
                    map.values_mut().for_each(drop_secret_findings);
                }
                Value::Array(items) => items.iter_mut().for_each(drop_secret_findings),
                _ => {}
            }
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                drop_secret_findings(&mut v);
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => redact_text(body, SCAN_SECRET_KEYS_QUOTED),
        }
    }

    /// Walks any object: env values, last-applied annotations, nested secrets (e.g. in lists).
    fn scrub(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(annotations)) = map.get_mut("annotations")
                    && let Some(v) = annotations.get_mut(LAST_APPLIED)
                {
                    *v = Value::String(self.hash(&value_text(v)));
                }
                if let Some(Value::Array(env)) = map.get_mut("env") {
                    for var in env.iter_mut() {
                        if let Some(v) = var.get_mut("value") {
                            *v = Value::String(self.hash(&value_text(v)));
                        }
                    }
                }
                let nested_secret = map.get("kind").and_then(Value::as_str) == Some("Secret");
                if nested_secret {
                    for field in ["data", "stringData"] {
                        if let Some(Value::Object(values)) = map.get_mut(field) {
                            for v in values.values_mut() {
                                *v = Value::String(self.hash(&value_text(v)));
                            }
                        }
                    }
                }
                // Into `env` too: its values are hashed above and stay hashed (a hash is not
                // hashed again below), and anything nested under a variable is walked like the
                // rest of the object.
                for v in map.values_mut() {
                    self.scrub(v);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub(v)),
            _ => {}
        }
    }
}

/// Keys of secret findings in scanner reports.
const SCAN_SECRET_KEYS: &[&str] = &["Secrets", "Match", "Code", "Content", "Highlighted"];
const SCAN_SECRET_KEYS_QUOTED: &[&str] = &[
    "\"Secrets\"",
    "\"Match\"",
    "\"Code\"",
    "\"Content\"",
    "\"Highlighted\"",
];

/// Keys whose values are blanked in text that is not valid JSON.
const TEXT_SECRET_KEYS: &[&str] = &[
    "\"data\"",
    "\"stringData\"",
    "\"binaryData\"",
    "\"value\"",
    LAST_APPLIED_QUOTED,
];
const LAST_APPLIED_QUOTED: &str = "\"kubectl.kubernetes.io/last-applied-configuration\"";
const REDACTED: &[u8] = b"\"<redacted>\"";

/// Blanks the value after each secret-bearing key: an object or array up to its matching
/// bracket, a string up to its closing quote, or everything to the end when the text is cut.
fn redact_text(body: &[u8], keys: &[&str]) -> Vec<u8> {
    rewrite_values(body, keys, |_| REDACTED.to_vec())
}

/// Replaces the value after each of `keys` (quoted, as they appear in JSON text) by what
/// `rewrite` makes of it; the value runs as far as [`skip_value`] says.
fn rewrite_values(
    body: &[u8],
    keys: &[&str],
    mut rewrite: impl FnMut(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    'scan: while i < body.len() {
        for key in keys {
            let k = key.as_bytes();
            if body[i..].starts_with(k) {
                out.extend_from_slice(k);
                let mut j = i + k.len();
                while j < body.len() && (body[j] == b' ' || body[j] == b':') {
                    out.push(body[j]);
                    j += 1;
                }
                i = skip_value(body, j);
                out.extend_from_slice(&rewrite(&body[j..i]));
                continue 'scan;
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

/// Index just past the JSON value starting at `start` (tolerating truncation).
fn skip_value(body: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (off, &b) in body[start..].iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    if depth == 0 {
                        return start + off + 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return start + off + 1;
                }
            }
            b',' | b'}' | b']' if depth == 0 => return start + off,
            _ => {}
        }
    }
    body.len()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_secret_like(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_LIKE.iter().any(|p| k.contains(p))
}

/// What reading a command line so far has shown.
#[derive(Default)]
struct CommandLine {
    /// The word before this one.
    previous: Option<String>,
    /// A MySQL client has been named (its `-p` takes the password attached).
    mysql: bool,
}

/// Programs whose `-p<password>` takes the password attached.
const MYSQL_CLIENTS: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mariadb",
    "mariadb-dump",
];

/// A command's program name without its directory: `/usr/bin/mysql` is `mysql`.
fn program_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// `--password`, `-token`, `--api-key`: a flag whose name looks secret.
fn is_secret_flag(arg: &str) -> bool {
    arg.starts_with('-') && is_secret_like(arg.trim_start_matches('-'))
}

/// A shell variable name (`PGPASSWORD`, `api_token`).
fn is_variable(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_never_survive() {
        let s = Sanitizer::new(b"0123456789abcdef");
        let obj = json!({"kind":"Secret","metadata":{"name":"db","annotations":{LAST_APPLIED:"{\"data\":{\"pw\":\"aHVudGVyMg==\"}}"}},
                          "data":{"pw":"aHVudGVyMg=="},"stringData":{"token":"hunter2"}});
        let out = s.sanitize_object(Some("secrets"), obj).to_string();
        assert!(
            !out.contains("hunter2") && !out.contains("aHVudGVyMg=="),
            "{out}"
        );
        assert!(out.contains("hmac-sha256:"));
        assert!(out.contains("\"db\""), "metadata is kept");
    }

    #[test]
    fn env_values_and_secret_like_configmap_keys_are_hashed() {
        let s = Sanitizer::new(b"0123456789abcdef");
        let pod = json!({"kind":"Pod","spec":{"containers":[{"name":"c","env":[{"name":"DB_PASSWORD","value":"hunter2"},
                          {"name":"FROM","valueFrom":{"secretKeyRef":{"name":"db","key":"pw"}}}]}]}});
        let out = s.sanitize_object(Some("pods"), pod);
        let text = out.to_string();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("DB_PASSWORD") && text.contains("secretKeyRef"));
        let cm = json!({"kind":"ConfigMap","data":{"db_password":"hunter2","log_level":"debug"}});
        let out = s.sanitize_object(None, cm).to_string();
        assert!(!out.contains("hunter2") && out.contains("debug"));
    }

    #[test]
    fn secrets_nested_below_env_are_hashed() {
        // Found by the sanitize fuzz target (fuzz/regressions/sanitize/secret-below-env.json):
        // the walk used to stop at `env`.
        let s = Sanitizer::new(b"0123456789abcdef");
        let obj = json!({"kind":"Pod","spec":{"containers":[{"name":"c","env":[{"name":"A",
                          "valueFrom":{"kind":"Secret","data":{"pw":"aHVudGVyMg=="}},
                          "metadata":{"annotations":{LAST_APPLIED:"{\"stringData\":{\"t\":\"hunter2\"}}"}}},
                          {"name":"B","value":"hunter3"}]}]}});
        let out = s.sanitize_object(Some("pods"), obj).to_string();
        for secret in ["aHVudGVyMg==", "hunter2", "hunter3"] {
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        assert_eq!(
            out.matches("hmac-sha256:").count(),
            3,
            "each hashed once: {out}"
        );
    }

    #[test]
    fn refused_bodies_lose_their_secrets_too() {
        let s = Sanitizer::new(b"0123456789abcdef");
        // Cut off mid-Secret: not JSON, so the text itself is redacted.
        let cut = br#"{"kind":"EventList","items":[{"requestObject":{"kind":"Secret","stringData":{"pw":"hunter2"}},"x":{"env":[{"name":"A","value":"s3cr3t"}]"#;
        let out = String::from_utf8(s.sanitize_rejected_body(cut)).expect("utf8");
        assert!(!out.contains("hunter2") && !out.contains("s3cr3t"), "{out}");
        assert!(
            out.contains("EventList") && out.contains("\"name\":\"A\""),
            "{out}"
        );
        // Valid JSON of the wrong kind: sanitised structurally.
        let wrong = br#"{"kind":"SecretList","apiVersion":"v1","items":[{"kind":"Secret","data":{"pw":"aHVudGVyMg=="}}]}"#;
        let out = String::from_utf8(s.sanitize_rejected_body(wrong)).expect("utf8");
        assert!(!out.contains("aHVudGVyMg=="), "{out}");
        assert!(out.contains("SecretList"));
    }

    #[test]
    fn secrets_on_an_exec_command_line_are_hashed_and_the_rest_kept() {
        let s = Sanitizer::new(b"0123456789abcdef");
        let exec = |args: &[&str]| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for a in args {
                q.append_pair("command", a);
            }
            format!(
                "/api/v1/namespaces/shop/pods/web-0/exec?{}&container=web&stdin=true",
                q.finish()
            )
        };
        for args in [
            &["mysql", "--password=hunter2", "-e", "select 1"][..],
            &["mysql", "-u", "root", "-phunter2"],
            &["/usr/bin/psql", "--password", "hunter2"],
            &["env", "PGPASSWORD=hunter2", "psql"],
            &["curl", "-H", "Authorization: Bearer hunter2", "http://api"],
            &["psql", "postgres://app:hunter2@db:5432/app"],
            &["sh", "-c", "curl -H 'Authorization: Basic hunter2' x"],
            &["sh", "-c", "mysql -u root -phunter2 -e 'select 1'"],
            &["sh", "-c", "PGPASSWORD=hunter2 psql -h db"],
            &["sh", "-c", "vault login -token hunter2 && ls"],
            &[
                "curl",
                "-H",
                "Authorization: Bearer hunter2",
                "-H",
                "X: Bearer hunter2",
            ],
        ] {
            let uri = exec(args);
            let clean = s.sanitize_request_uri(&uri);
            assert!(!clean.contains("hunter2"), "{args:?}: {clean}");
            assert!(clean.contains("hmac-sha256%3A"), "{args:?}: {clean}");
            assert!(clean.ends_with("&container=web&stdin=true"), "{clean}");
            let program = uri.split('&').next().unwrap_or_default();
            assert!(clean.starts_with(program), "{program} kept: {clean}");
        }
        // Nothing secret: the very same string.
        let plain = exec(&["tar", "cf", "-", "/data"]);
        assert!(matches!(s.sanitize_request_uri(&plain), Cow::Borrowed(_)));
        assert!(matches!(
            s.sanitize_request_uri("/api/v1/pods?watch=true&limit=500"),
            Cow::Borrowed(_)
        ));
        // A secret-like query parameter.
        let clean = s.sanitize_request_uri("/apis/x/v1/things?token=hunter2&limit=1");
        assert!(
            !clean.contains("hunter2") && clean.ends_with("&limit=1"),
            "{clean}"
        );
        // The dead-letter path sanitises the URI too, in JSON and in a body cut short (with
        // `&` escaped as kube-apiserver's encoder does).
        let raw = serde_json::json!({"requestURI": exec(&["mysql", "-phunter2"])});
        assert!(
            !s.sanitize_audit_json(raw.clone())
                .to_string()
                .contains("hunter2")
        );
        let text = raw.to_string().replace('&', "\\u0026");
        for cut in [text.len(), text.len() - 2, text.len() - 10] {
            let out = s.sanitize_rejected_body(&text.as_bytes()[..cut]);
            let out = String::from_utf8_lossy(&out);
            assert!(!out.contains("hunter2"), "{out}");
            assert!(out.contains("exec?command=mysql"), "{out}");
        }
    }

    #[test]
    fn hashes_are_keyed_and_stable() {
        let a = Sanitizer::new(b"0123456789abcdef");
        let b = Sanitizer::new(b"fedcba9876543210");
        assert_eq!(a.hash("x"), a.hash("x"));
        assert_ne!(a.hash("x"), b.hash("x"));
        assert_ne!(Sanitizer::random().hash("x"), Sanitizer::random().hash("x"));
    }
}
