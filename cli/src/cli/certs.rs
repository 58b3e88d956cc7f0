//! `sitrep certs init|issue|show`: the private CA and the certificates sites use for mutual
//! TLS (the `pki` crate does the work; this module parses arguments and prints).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use pki::{CertInfo, CertOptions, DirReport, InitReport, IssueReport};

use crate::Outcome;

/// Shown after `sitrep certs --help`: the whole workflow, since the commands only make
/// sense together.
const WORKFLOW: &str = "\
Workflow: the secondary site runs the CA; the primary dials the secondary.

  On the secondary (siteb, dialled at 10.0.0.2):
    sitrep certs init  --dir /etc/sitrep/pki --name siteb --san 10.0.0.2
    sitrep certs issue --ca /etc/sitrep/pki --name sitea --out ./sitea-pki
  Copy ./sitea-pki to the primary, e.g. as /etc/sitrep/pki (key.pem is secret: keep mode 0600).
  On the primary:
    sitrep certs show --dir /etc/sitrep/pki

The client connects with --to HOST:PORT and accepts the server only if its certificate names
HOST: issue the server's cert with --san <its address> (one --san per address or DNS name it is
dialled by). Every certificate works for both ends, so reverse replication needs no new ones.";

/// `sitrep certs ...`.
#[derive(Subcommand)]
#[command(after_long_help = WORKFLOW)]
pub(crate) enum CertsCommand {
    /// Create a private CA and this host's certificate (run once, on the secondary).
    ///
    /// Writes DIR/ca.pem (the CA certificate), DIR/ca.key (the CA's private key: it signs new
    /// certificates, keep it on this host only), DIR/cert.pem and DIR/key.pem (this host's
    /// certificate, CN NAME, and key). Private keys are written with mode 0600. Refuses to
    /// replace existing files unless --force: a new CA invalidates every certificate the old
    /// one issued.
    Init(InitArgs),
    /// Issue a certificate for a peer, signed by the CA made by `certs init`.
    ///
    /// Writes OUT/ca.pem, OUT/cert.pem and OUT/key.pem (no CA key): copy OUT to the peer as
    /// its PKI directory.
    Issue(IssueArgs),
    /// Show a PKI directory's certificates (subject, SANs, issuer, validity, fingerprint)
    /// and whether it works as a TLS identity.
    ///
    /// Exits with status 3 if it would not (file unreadable, key not the certificate's,
    /// certificate not issued by ca.pem, or expired).
    Show(ShowArgs),
}

/// What every new certificate needs.
#[derive(Args)]
pub(crate) struct CertArgs {
    /// This host's name: the certificate's CN, which the peer sees (also a DNS SAN if it is
    /// a valid DNS name). Letters, digits, '-', '.', '_'.
    #[arg(long)]
    name: String,
    /// An extra subject alternative name: an IP address or a DNS name the host is dialled
    /// by. Repeatable. The server's certificate must carry the HOST of the client's
    /// --to HOST:PORT.
    #[arg(long = "san", value_name = "ADDR")]
    sans: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = pki::DEFAULT_DAYS)]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl CertArgs {
    fn options(&self, expired: bool) -> CertOptions {
        CertOptions {
            force: self.force,
            expired,
            ..CertOptions::new(&self.sans, self.days)
        }
    }
}

/// Arguments of `sitrep certs init`.
#[derive(Args)]
pub(crate) struct InitArgs {
    /// The PKI directory to create (mode 0700 if new), e.g. /etc/sitrep/pki.
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    cert: CertArgs,
}

/// Arguments of `sitrep certs issue`.
#[derive(Args)]
pub(crate) struct IssueArgs {
    /// The CA's directory (made by `certs init`, holds ca.key).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// The directory to write the peer's files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    cert: CertArgs,
    /// Tests only: issue a certificate that has already expired.
    #[arg(long, hide = true)]
    expired: bool,
}

/// Arguments of `sitrep certs show`.
#[derive(Args)]
pub(crate) struct ShowArgs {
    /// The PKI directory.
    #[arg(long)]
    dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `sitrep certs ...`.
pub(crate) fn run(cmd: CertsCommand) -> anyhow::Result<Outcome> {
    match cmd {
        CertsCommand::Init(a) => init(&a),
        CertsCommand::Issue(a) => issue(&a),
        CertsCommand::Show(a) => show(&a),
    }
}

fn init(a: &InitArgs) -> anyhow::Result<Outcome> {
    let r = pki::init_with(&a.dir, &a.cert.name, &a.cert.options(false))
        .with_context(|| format!("creating the CA in {}", a.dir.display()))?;
    if a.cert.json {
        crate::outln!("{}", serde_json::to_string(&r)?);
    } else {
        print_init(&r);
    }
    Ok(Outcome::Ok)
}

fn print_init(r: &InitReport) {
    crate::outln!("created a CA and the certificate of {}", cn(&r.cert));
    print_cert("CA", &r.ca);
    print_cert("certificate", &r.cert);
    crate::outln!("wrote {}", files(&r.files));
    crate::outln!(
        "{} signs new certificates: keep it on this host only.",
        r.dir.join(pki::CA_KEY_FILE).display()
    );
    crate::outln!(
        "next: sitrep certs issue --ca {} --name <peer> --out ./<peer>-pki",
        r.dir.display()
    );
}

fn issue(a: &IssueArgs) -> anyhow::Result<Outcome> {
    let r = pki::issue_with(&a.ca, &a.cert.name, &a.cert.options(a.expired), &a.out)
        .with_context(|| format!("issuing a certificate for {}", a.cert.name))?;
    if a.cert.json {
        crate::outln!("{}", serde_json::to_string(&r)?);
    } else {
        print_issue(&r);
    }
    Ok(Outcome::Ok)
}

fn print_issue(r: &IssueReport) {
    crate::outln!(
        "issued the certificate of {}, signed by {}",
        cn(&r.cert),
        cn(&r.ca)
    );
    print_cert("certificate", &r.cert);
    crate::outln!("wrote {}", files(&r.files));
    crate::outln!(
        "copy {} to {} as its PKI directory (key.pem is secret).",
        r.out_dir.display(),
        cn(&r.cert)
    );
}

fn show(a: &ShowArgs) -> anyhow::Result<Outcome> {
    let r = pki::describe(&a.dir).with_context(|| format!("reading {}", a.dir.display()))?;
    if a.json {
        crate::outln!("{}", serde_json::to_string(&r)?);
    } else {
        print_show(&r);
    }
    Ok(if r.problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}

fn print_show(r: &DirReport) {
    let can_issue = if r.has_ca_key {
        " (holds the CA key: can issue certificates)"
    } else {
        ""
    };
    crate::outln!("{}{can_issue}", r.dir.display());
    for c in &r.ca {
        print_cert("CA", c);
    }
    for (i, c) in r.chain.iter().enumerate() {
        print_cert(if i == 0 { "certificate" } else { "chain" }, c);
    }
    if r.problems.is_empty() {
        crate::outln!("OK: loads as a TLS identity, within validity");
    }
    for p in &r.problems {
        crate::outln!("PROBLEM: {p}");
    }
}

fn print_cert(what: &str, c: &CertInfo) {
    let expired = if c.expired { "  EXPIRED" } else { "" };
    crate::outln!("{what}:");
    crate::outln!("  subject   {}", c.subject);
    if !c.sans.is_empty() {
        crate::outln!("  SANs      {}", c.sans.join(", "));
    }
    crate::outln!("  issuer    {}", c.issuer);
    crate::outln!("  valid     {} .. {}{expired}", c.not_before, c.not_after);
    crate::outln!("  serial    {}", c.serial);
    crate::outln!("  SHA-256   {}", c.sha256_fingerprint);
}

fn cn(c: &CertInfo) -> &str {
    c.common_name.as_deref().unwrap_or(&c.subject)
}

fn files(paths: &[PathBuf]) -> String {
    let names: Vec<_> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let dir = paths
        .first()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("."));
    format!("{}/{{{}}}", dir.display(), names.join(", "))
}
