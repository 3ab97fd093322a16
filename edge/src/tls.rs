//! TLS termination: certificates chosen by SNI, reloaded without a restart.
//!
//! [`Certificates`] is the rustls certificate resolver. It holds the loaded
//! set behind an `ArcSwap`: a handshake reads the current set without a
//! lock, and [`Certificates::reload`] swaps in a new one only when every
//! file parses and every key matches its certificate; otherwise the old set
//! stays and the error is returned (and logged by the caller). Open
//! connections keep the keys they were set up with, so nothing is dropped.
//!
//! [`watch`] reloads when a file in a certificate's directory changes. It
//! watches the directory rather than the files, so a symlink swap (what
//! cert-manager and Kubernetes secret volumes do) is seen too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use edgelink_core::config::CertificateFiles;
use edgelink_core::shutdown::CancellationToken;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One loaded set of certificates.
#[derive(Debug)]
struct CertSet {
    /// Exact DNS names (lower case).
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The first certificate: for clients without SNI or with an unknown name.
    default: Arc<CertifiedKey>,
    /// What was loaded, for logs and the admin view.
    names: Vec<String>,
    /// Each certificate file with its leaf's notAfter (Unix seconds).
    expiries: Expiries,
}

/// Certificate files and when their leaves expire (Unix seconds); a new
/// allocation per loaded set, so a reload shows as a new pointer.
pub type Expiries = Arc<[(PathBuf, i64)]>;

/// The SNI certificate resolver rustls asks on every handshake.
#[derive(Debug)]
pub struct Certificates {
    files: ArcSwap<Vec<CertificateFiles>>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertSet>,
}

impl Certificates {
    /// Loads every certificate in `files`; the first is the default.
    pub fn load(files: &[CertificateFiles]) -> Result<Arc<Certificates>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let set = load_set(files, &provider)?;
        Ok(Arc::new(Certificates {
            files: ArcSwap::from_pointee(files.to_vec()),
            provider,
            current: ArcSwap::from_pointee(set),
        }))
    }

    /// Reads the files again; on any failure the current certificates stay.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let set = load_set(&self.files.load(), &self.provider)?;
        let names = set.names.clone();
        self.current.store(Arc::new(set));
        Ok(names)
    }

    /// [`Certificates::reload`] from another list of files (a reloaded
    /// configuration); the list is kept only if it loads. The watch keeps
    /// following the directories of the first list.
    pub fn reload_from(&self, files: &[CertificateFiles]) -> Result<Vec<String>, String> {
        if files.is_empty() {
            return Err(
                "tls.certificates cannot be emptied by a reload; restart to turn TLS off".into(),
            );
        }
        let set = load_set(files, &self.provider)?;
        let names = set.names.clone();
        self.files.store(Arc::new(files.to_vec()));
        self.current.store(Arc::new(set));
        Ok(names)
    }

    /// The DNS names currently served.
    pub fn names(&self) -> Vec<String> {
        self.current.load().names.clone()
    }

    /// The files currently served and when each expires.
    pub fn expiries(&self) -> Expiries {
        self.current.load().expiries.clone()
    }

    /// A rustls server config over this resolver: TLS 1.3 and 1.2 only,
    /// ALPN `h2` then `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The directories holding the files (what [`watch`] follows).
    fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .files
            .load()
            .iter()
            .flat_map(|f| [&f.cert, &f.key])
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        let Some(name) = hello.server_name() else {
            return Some(set.default.clone());
        };
        let name = name.to_ascii_lowercase();
        let found = set.exact.get(&name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| set.wildcard.get(parent))
        });
        Some(found.unwrap_or(&set.default).clone())
    }
}

fn load_set(files: &[CertificateFiles], provider: &CryptoProvider) -> Result<CertSet, String> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut names = Vec::new();
    let mut expiries = Vec::with_capacity(files.len());
    for f in files {
        let (key, Leaf { dns, not_after }) = load_pair(f, provider)?;
        expiries.push((f.cert.clone(), not_after));
        for name in dns {
            let lower = name.to_ascii_lowercase();
            match lower.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_owned())
                    .or_insert_with(|| key.clone()),
                None => exact.entry(lower.clone()).or_insert_with(|| key.clone()),
            };
            names.push(lower);
        }
        default.get_or_insert(key);
    }
    let default = default.ok_or("tls.certificates is empty")?;
    Ok(CertSet {
        exact,
        wildcard,
        default,
        names,
        expiries: expiries.into(),
    })
}

/// What the edge reads off a leaf certificate.
struct Leaf {
    /// Its subjectAltNames, else its common name.
    dns: Vec<String>,
    /// notAfter, Unix seconds.
    not_after: i64,
}

/// One chain and key, checked to belong together; with the leaf's names
/// and expiry.
fn load_pair(
    f: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Leaf), String> {
    let at = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
        .map_err(|e| at(&f.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| at(&f.cert, &e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| at(&f.cert, &"no certificate in the file"))?;
    let leaf = read_leaf(leaf).map_err(|e| at(&f.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| at(&f.key, &e))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| at(&f.key, &e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {}: {e}", f.cert.display(), f.key.display()))?;
    Ok((Arc::new(certified), leaf))
}

fn read_leaf(leaf: &CertificateDer<'_>) -> Result<Leaf, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    Ok(Leaf {
        dns: names,
        not_after,
    })
}

/// Reloads `certs` whenever a file in their directories changes, until
/// `shutdown`. Events are gathered for a quarter second first, so a
/// certificate and key written one after the other load together.
pub fn watch(certs: Arc<Certificates>, shutdown: CancellationToken) -> Result<(), String> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch certificates: {e}"))?;
    for dir in certs.directories() {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and the watch ended) with this task
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            while rx.try_recv().is_ok() {}
            report_reload(&certs, "a file changed");
        }
    });
    Ok(())
}

/// Reloads and logs the outcome.
pub fn report_reload(certs: &Certificates, why: &str) {
    match certs.reload() {
        Ok(names) => tracing::info!(?names, why, "certificates reloaded"),
        Err(e) => {
            tracing::error!(error = %e, why, "certificates not reloaded; keeping the old ones")
        }
    }
}
