//! The ref update commands at the start of a `git-receive-pack` request body (git's
//! pack protocol, `Documentation/gitprotocol-pack.txt`), read without trusting them:
//!
//! ```text
//! body        = probe / request
//! probe       = "0000"                      ; sent before a large (chunked) push
//! request     = *shallow (commands / push-cert) flush [push-options flush] [pack]
//! shallow     = PKT-LINE("shallow" SP id)
//! commands    = PKT-LINE(command NUL capabilities) *PKT-LINE(command)
//! command     = old-id SP new-id SP refname
//! push-cert   = PKT-LINE("push-cert" NUL capabilities)
//!               *PKT-LINE(header)  PKT-LINE(LF)  *PKT-LINE(command)
//!               *PKT-LINE(signature)  PKT-LINE("push-cert-end")
//! push-options = *PKT-LINE(option)          ; only with the `push-options` capability
//! ```
//!
//! Ids are 40 hex digits (SHA-1) or 64 (SHA-256), the same length throughout (the
//! `object-format` capability, if given, decides which). A zero new id deletes the
//! ref. Ref names must be valid (`git check-ref-format`) and start with `refs/`. The
//! pack after the commands is not read. Anything else — a bad length, a truncated
//! packet, a missing flush, a second capability list — is an error: the caller refuses.

use super::refname;

/// The commands of one push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    /// The ref updates, in order.
    pub updates: Vec<RefUpdate>,
    /// The capabilities the client asked for (`report-status`, `side-band-64k`, ...).
    pub capabilities: Vec<String>,
    /// The push options (`git push -o`), when the `push-options` capability is given.
    pub push_options: Vec<String>,
    /// Whether the commands came inside a push certificate.
    pub certificate: bool,
    /// Whether the body was only the 4-byte probe `0000`.
    pub probe: bool,
}

impl Commands {
    /// Whether the client asked for capability `name` (with or without a `=value`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|capability| {
            capability == name
                || capability
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    }
}

/// One ref update: `old new ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The id the client believes the ref has (all zeros: create).
    pub old: String,
    /// The id it should get (all zeros: delete).
    pub new: String,
    /// The full ref name (`refs/heads/main`).
    pub name: String,
}

impl RefUpdate {
    /// Whether this update deletes the ref.
    pub fn is_delete(&self) -> bool {
        is_zero(&self.new)
    }
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

/// A pkt-line: data (without one trailing LF) or a flush.
#[derive(Debug, PartialEq, Eq)]
enum Packet<'a> {
    Flush,
    Data(&'a [u8]),
}

/// Reads pkt-lines from the front of a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<Packet<'a>, String> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let Some(head) = rest.get(..4) else {
            return Err(format!(
                "the command list ends inside a pkt-line length at byte {} (truncated or no flush)",
                self.at
            ));
        };
        let len = std::str::from_utf8(head)
            .ok()
            .filter(|text| text.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|text| usize::from_str_radix(text, 16).ok())
            .ok_or_else(|| format!("bad pkt-line length at byte {}", self.at))?;
        match len {
            0 => {
                self.at += 4;
                Ok(Packet::Flush)
            }
            1..=4 => Err(format!(
                "pkt-line length {len:04x} at byte {} is not valid in a push",
                self.at
            )),
            _ => {
                let Some(payload) = rest.get(4..len) else {
                    return Err(format!(
                        "the pkt-line at byte {} is truncated (length {len}, {} bytes left)",
                        self.at,
                        rest.len()
                    ));
                };
                self.at += len;
                Ok(Packet::Data(payload.strip_suffix(b"\n").unwrap_or(payload)))
            }
        }
    }

    /// The next packet, which must be data, as text.
    fn line(&mut self, what: &str) -> Result<&'a str, String> {
        match self.next()? {
            Packet::Data(data) => text(data),
            Packet::Flush => Err(format!("a flush where {what} was expected")),
        }
    }
}

fn text(data: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(data).map_err(|_| "a pkt-line that is not UTF-8".to_owned())
}

/// The commands of a `git-receive-pack` request body (or of a prefix of it holding at
/// least the commands). `Err` says what is wrong.
pub fn receive_pack_commands(bytes: &[u8]) -> Result<Commands, String> {
    let mut commands = Commands::default();
    if bytes == b"0000" {
        commands.probe = true;
        return Ok(commands);
    }
    let mut reader = Reader { bytes, at: 0 };
    let mut ids = IdLength::default();
    let mut first = true;
    loop {
        let data = match reader.next()? {
            Packet::Flush => break,
            Packet::Data(data) => data,
        };
        let (line, capabilities) = match data.iter().position(|&b| b == 0) {
            Some(nul) => (
                text(data.get(..nul).unwrap_or_default())?,
                Some(text(data.get(nul + 1..).unwrap_or_default())?),
            ),
            None => (text(data)?, None),
        };
        if let Some(id) = line.strip_prefix("shallow ") {
            if !first || capabilities.is_some() {
                return Err("a `shallow` line after the first command".to_owned());
            }
            ids.check(id, "shallow id")?;
            continue;
        }
        if let Some(capabilities) = capabilities {
            if !first {
                return Err("a capability list after the first command".to_owned());
            }
            commands.capabilities = capabilities
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            ids.expect_format(&commands)?;
        } else if first {
            return Err("the first command carries no capability list".to_owned());
        }
        if line == "push-cert" {
            if !first {
                return Err("a push certificate after the first command".to_owned());
            }
            commands.certificate = true;
            read_certificate(&mut reader, &mut ids, &mut commands.updates)?;
            first = false;
            continue;
        }
        if commands.certificate {
            return Err("a command outside the push certificate".to_owned());
        }
        commands.updates.push(command(line, &mut ids)?);
        first = false;
    }
    if first {
        // A bare flush: no commands, nothing to update.
        return Ok(commands);
    }
    if commands.updates.is_empty() {
        return Err("a push certificate without commands".to_owned());
    }
    if commands.has_capability("push-options") {
        loop {
            match reader.next()? {
                Packet::Flush => break,
                Packet::Data(data) => commands.push_options.push(text(data)?.to_owned()),
            }
        }
    }
    Ok(commands)
}

/// The certificate after its `push-cert` line, through `push-cert-end`.
fn read_certificate(
    reader: &mut Reader<'_>,
    ids: &mut IdLength,
    updates: &mut Vec<RefUpdate>,
) -> Result<(), String> {
    // Header lines (`certificate version`, `pusher`, `pushee`, `nonce`, ...), then a
    // blank line.
    if reader.line("the certificate version")? != "certificate version 0.1" {
        return Err("a push certificate of an unknown version".to_owned());
    }
    while !reader.line("a certificate header")?.is_empty() {}
    let mut signed = false;
    loop {
        let line = reader.line("`push-cert-end`")?;
        if line == "push-cert-end" {
            return Ok(());
        }
        if line.starts_with("-----BEGIN ") {
            signed = true;
        }
        if !signed {
            updates.push(command(line, ids)?);
        }
    }
}

fn command(line: &str, ids: &mut IdLength) -> Result<RefUpdate, String> {
    let mut parts = line.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "`{}` is not a ref update (`old new ref`)",
            crate::decide::quote(line)
        ));
    };
    ids.check(old, "old id")?;
    ids.check(new, "new id")?;
    refname::check(name)?;
    Ok(RefUpdate {
        old: old.to_owned(),
        new: new.to_owned(),
        name: name.to_owned(),
    })
}

/// The object id length of the push, fixed by the first id (or `object-format`).
#[derive(Debug, Default)]
struct IdLength(Option<usize>);

impl IdLength {
    fn expect_format(&mut self, commands: &Commands) -> Result<(), String> {
        let format = commands
            .capabilities
            .iter()
            .find_map(|c| c.strip_prefix("object-format="));
        let len = match format {
            None => return Ok(()),
            Some("sha1") => 40,
            Some("sha256") => 64,
            Some(other) => {
                return Err(format!(
                    "unknown object format `{}`",
                    crate::decide::quote(other)
                ));
            }
        };
        self.fix(len)
    }

    fn fix(&mut self, len: usize) -> Result<(), String> {
        match self.0 {
            Some(known) if known != len => Err(format!(
                "object ids of {len} hex digits in a push of {known}-digit ids"
            )),
            _ => {
                self.0 = Some(len);
                Ok(())
            }
        }
    }

    fn check(&mut self, id: &str, what: &str) -> Result<(), String> {
        if !matches!(id.len(), 40 | 64) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{what} `{}` is not a SHA-1 or SHA-256 object id",
                crate::decide::quote(id)
            ));
        }
        self.fix(id.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    pub(crate) fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    fn push(lines: &[&str], caps: &str) -> Vec<u8> {
        let mut body = String::new();
        for (index, line) in lines.iter().enumerate() {
            if index == 0 {
                body.push_str(&pkt(&format!("{line}\0{caps}\n")));
            } else {
                body.push_str(&pkt(&format!("{line}\n")));
            }
        }
        body.push_str("0000PACK\0\0\0\x02");
        body.into_bytes()
    }

    #[test]
    fn plain_commands_and_capabilities() {
        let body = push(
            &[
                &format!("{A} {B} refs/heads/agent/x"),
                &format!("{B} {Z} refs/heads/old"),
            ],
            "report-status side-band-64k agent=git/2.45",
        );
        let commands = receive_pack_commands(&body).unwrap();
        assert_eq!(commands.updates.len(), 2);
        assert_eq!(commands.updates[0].name, "refs/heads/agent/x");
        assert!(!commands.updates[0].is_delete());
        assert!(commands.updates[1].is_delete());
        assert!(commands.has_capability("report-status"));
        assert!(commands.has_capability("agent"));
        assert!(!commands.has_capability("report"));
        assert!(!commands.certificate && !commands.probe);
    }

    #[test]
    fn probe_shallow_and_push_options() {
        assert!(receive_pack_commands(b"0000").unwrap().probe);
        let mut body = pkt(&format!("shallow {A}\n"));
        body.push_str(&pkt(&format!(
            "{A} {B} refs/heads/a\0report-status push-options\n"
        )));
        body.push_str("0000");
        body.push_str(&pkt("ci.skip\n"));
        body.push_str("0000PACK");
        let commands = receive_pack_commands(body.as_bytes()).unwrap();
        assert_eq!(commands.push_options, ["ci.skip"]);
        assert_eq!(commands.updates.len(), 1);
        // Push options announced but missing their flush: truncated.
        let cut = body.find("0000PACK").unwrap();
        assert!(receive_pack_commands(&body.as_bytes()[..cut]).is_err());
    }

    #[test]
    fn sha256_ids_and_consistent_lengths() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let body = push(
            &[&format!("{a} {b} refs/heads/x")],
            "report-status object-format=sha256",
        );
        assert_eq!(receive_pack_commands(&body).unwrap().updates[0].new, b);
        let mixed = push(&[&format!("{a} {B} refs/heads/x")], "report-status");
        assert!(receive_pack_commands(&mixed).is_err());
        let wrong_format = push(&[&format!("{A} {B} refs/heads/x")], "object-format=sha256");
        assert!(receive_pack_commands(&wrong_format).is_err());
        let short = push(&[&format!("{} {B} refs/heads/x", &A[1..])], "");
        assert!(receive_pack_commands(&short).is_err());
    }

    #[test]
    fn push_certificate() {
        let mut body = pkt("push-cert\0report-status\n");
        for line in [
            "certificate version 0.1\n",
            "pusher A U Thor <a@example.com> 1700000000 +0000\n",
            "pushee https://git.example/r.git\n",
            "nonce 1700000000-abc\n",
            "\n",
            &format!("{A} {B} refs/heads/agent/x\n"),
            &format!("{A} {B} refs/heads/main\n"),
            "-----BEGIN PGP SIGNATURE-----\n",
            "iQEz\n",
            "-----END PGP SIGNATURE-----\n",
            "push-cert-end\n",
        ] {
            body.push_str(&pkt(line));
        }
        body.push_str("0000PACK");
        let commands = receive_pack_commands(body.as_bytes()).unwrap();
        assert!(commands.certificate);
        let names: Vec<_> = commands.updates.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["refs/heads/agent/x", "refs/heads/main"]);
        // Cut before push-cert-end: refused.
        let cut = body.find(&pkt("push-cert-end\n")).unwrap();
        assert!(receive_pack_commands(&body.as_bytes()[..cut]).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let good = push(&[&format!("{A} {B} refs/heads/a")], "report-status");
        let flush = good.windows(4).position(|w| w == b"0000").unwrap();
        for (why, body) in [
            ("empty", Vec::new()),
            ("no flush", good[..flush].to_vec()),
            ("cut packet", good[..10].to_vec()),
            ("bad length", b"zzzz".to_vec()),
            ("length 1", b"0001".to_vec()),
            ("empty packet", b"00040000".to_vec()),
            (
                "no capabilities",
                format!("{}0000", pkt(&format!("{A} {B} refs/heads/a\n"))).into_bytes(),
            ),
            ("two fields", push(&[&format!("{A} {B}")], "report-status")),
            (
                "second capability list",
                format!(
                    "{}{}0000",
                    pkt(&format!("{A} {B} refs/heads/a\0report-status\n")),
                    pkt(&format!("{A} {B} refs/heads/b\0report-status\n"))
                )
                .into_bytes(),
            ),
            ("bad ref", push(&[&format!("{A} {B} refs/heads/a..b")], "")),
            (
                "not hex",
                push(&[&format!("{} {B} refs/heads/a", "g".repeat(40))], ""),
            ),
        ] {
            assert!(receive_pack_commands(&body).is_err(), "{why}");
        }
    }
}
