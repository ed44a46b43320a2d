//! A group of replica processes: each started with its identity, its peers and the group's
//! security, logged to its own file (appended across restarts), killed, stopped or signalled
//! by the PID this process holds, and reaped. Addresses, state directories and log files are
//! the caller's choice ([`Member`]); so is when to start each one ([`Start`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use palisadectl::remote::Conn;

use crate::handle::Handle;
use crate::util::{free_port, http_get, stop};

/// How the group's replicas talk to each other and to operators.
#[derive(Clone, Debug)]
pub enum Security {
    /// mTLS with the certificates `palisadectl certs` wrote into `certs` (the CA, one per
    /// replica id); operators connect as `operator`.
    Mtls { certs: PathBuf, operator: String },
    /// Plaintext, said explicitly (`--insecure`; `remote`: also `--insecure-allow-remote`,
    /// for addresses other than loopback).
    Insecure { remote: bool },
}

impl Security {
    /// An operator's connection to `addr`.
    pub fn conn(&self, addr: &str) -> Conn {
        match self {
            Security::Mtls { certs, operator } => Conn::operator(addr.to_string(), certs, operator),
            Security::Insecure { .. } => Conn::insecure(addr),
        }
    }

    fn flags(&self, id: u64) -> Vec<OsString> {
        match self {
            Security::Mtls { certs, .. } => palisadectl::certs::replica_flags(certs, id).into(),
            Security::Insecure { remote } => {
                let mut f: Vec<OsString> = vec!["--insecure".into()];
                if *remote {
                    f.push("--insecure-allow-remote".into());
                }
                f
            }
        }
    }
}

/// What every replica of the group gets.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The `palisade-controller` binary.
    pub bin: PathBuf,
    pub security: Security,
    /// Arguments every replica gets (its sources, limits, timings).
    pub args: Vec<OsString>,
    /// `RUST_LOG` for every replica.
    pub log_filter: String,
}

/// One replica: where it listens, is reached, keeps its state and logs.
#[derive(Clone, Debug)]
pub struct Member {
    /// `--listen`.
    pub listen: String,
    /// Where agents, peers and operators reach it (its `--peers` entry): `listen`, or what
    /// stands in front of it (a proxy).
    pub reached: String,
    /// `--metrics-listen`, when it serves metrics.
    pub metrics: Option<String>,
    /// `--state-dir`.
    pub state: PathBuf,
    /// Its stdout and stderr, appended.
    pub log: PathBuf,
    /// The command it runs under (`ip netns exec NS`), when not directly.
    pub wrap: Vec<OsString>,
}

impl Member {
    /// A replica on loopback, listening and reached on a free port (metrics on another), its
    /// state in `dir/state-ID` and its log in `dir/replica-ID.log`.
    pub fn loopback(dir: &Path, id: u64) -> std::io::Result<Member> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let addr = format!("127.0.0.1:{}", free_port(lo)?);
        Ok(Member {
            listen: addr.clone(),
            reached: addr,
            metrics: Some(format!("127.0.0.1:{}", free_port(lo)?)),
            state: dir.join(format!("state-{id}")),
            log: dir.join(format!("replica-{id}.log")),
            wrap: Vec::new(),
        })
    }
}

/// How to start a replica.
#[derive(Clone, Debug)]
pub struct Start {
    /// `--bootstrap=…`: a new group on first start (ignored once its directory holds one).
    pub bootstrap: bool,
    /// Run in the place of member `slot` (its listen address, its `--peers` entry), as a
    /// StatefulSet pod runs under a new id: `--ordinal` and `--id-file` instead of `--id`.
    pub slot: Option<u64>,
    /// Arguments for this start only.
    pub args: Vec<OsString>,
}

impl Default for Start {
    fn default() -> Start {
        Start {
            bootstrap: true,
            slot: None,
            args: Vec::new(),
        }
    }
}

/// Replica processes; every one still running is killed when the group is dropped.
pub struct Group {
    spec: Spec,
    members: BTreeMap<u64, Member>,
    children: BTreeMap<u64, Child>,
}

impl Group {
    pub fn new(spec: Spec) -> Group {
        Group {
            spec,
            members: BTreeMap::new(),
            children: BTreeMap::new(),
        }
    }

    /// Add (or replace) member `id`: named in the `--peers` of every replica started after.
    pub fn add(&mut self, id: u64, member: Member) {
        self.members.insert(id, member);
    }

    /// Stop naming member `id` in `--peers` (removed from the group); it must not run.
    pub fn forget(&mut self, id: u64) -> Option<Member> {
        self.members.remove(&id)
    }

    pub fn member(&self, id: u64) -> &Member {
        &self.members[&id]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Where member `id` is reached.
    pub fn addr(&self, id: u64) -> String {
        self.members[&id].reached.clone()
    }

    /// Every member's address, comma-separated (an agent's `--controller`).
    pub fn addrs(&self) -> String {
        self.members
            .values()
            .map(|m| m.reached.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start member `id` (it must not run); its PID.
    pub fn start(&mut self, id: u64, how: Start) -> std::io::Result<u32> {
        if self.children.contains_key(&id) {
            return Err(std::io::Error::other(format!("replica {id} runs already")));
        }
        let m = &self.members[&id];
        let peers: Vec<String> = self
            .members
            .iter()
            .filter(|(i, _)| how.slot.is_none() || **i != id)
            .map(|(i, m)| format!("{i}={}", m.reached))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let mut cmd = match m.wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.spec.bin);
                c
            }
            None => Command::new(&self.spec.bin),
        };
        let listen = match how.slot {
            Some(s) => {
                let file = m
                    .state
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(format!("id-in-slot-{s}"));
                std::fs::write(&file, format!("{id}\n"))?;
                cmd.arg("--ordinal")
                    .arg((s - 1).to_string())
                    .arg("--id-file")
                    .arg(file);
                &self.members[&s].listen
            }
            None => {
                cmd.arg("--id").arg(id.to_string());
                &m.listen
            }
        };
        cmd.arg("--peers")
            .arg(peers.join(","))
            .arg(format!("--bootstrap={}", how.bootstrap))
            .arg("--listen")
            .arg(listen);
        if let Some(metrics) = &m.metrics {
            cmd.arg("--metrics-listen").arg(metrics);
        }
        cmd.arg("--state-dir")
            .arg(&m.state)
            .args(self.spec.security.flags(id))
            .args(&self.spec.args)
            .args(&how.args)
            .env("RUST_LOG", &self.spec.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        let pid = child.id();
        self.children.insert(id, child);
        Ok(pid)
    }

    /// Member `id`'s process, to stop elsewhere (outside a lock, off an async thread).
    pub fn take(&mut self, id: u64) -> Option<Child> {
        self.children.remove(&id)
    }

    /// SIGKILL member `id` and reap it; whether it ran.
    pub fn kill(&mut self, id: u64) -> bool {
        self.stop(id, Duration::ZERO)
    }

    /// SIGTERM member `id`, up to `grace` for it to end, then SIGKILL; reaped. Whether it ran.
    pub fn stop(&mut self, id: u64, grace: Duration) -> bool {
        match self.take(id) {
            Some(c) => {
                stop(c, grace);
                true
            }
            None => false,
        }
    }

    /// Send `signal` to member `id` (SIGSTOP, SIGCONT, SIGTERM, ...): the process this group
    /// started and has not reaped.
    pub fn signal(&mut self, id: u64, signal: i32) -> std::io::Result<()> {
        let c = self
            .children
            .get_mut(&id)
            .ok_or_else(|| std::io::Error::other(format!("replica {id} does not run")))?;
        // Ended and reaped already (its PID may be another process's now): not signalled.
        if let Some(status) = c.try_wait()? {
            return Err(std::io::Error::other(format!(
                "replica {id} has ended ({status})"
            )));
        }
        // SAFETY: a plain signal to a child this process started and has not reaped, so its
        // PID is still this child's.
        if unsafe { libc::kill(c.id() as i32, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// How member `id` ended, when it has (then it is reaped and no longer runs).
    pub fn exited(&mut self, id: u64) -> std::io::Result<Option<ExitStatus>> {
        let Some(c) = self.children.get_mut(&id) else {
            return Err(std::io::Error::other(format!("replica {id} does not run")));
        };
        let status = c.try_wait()?;
        if status.is_some() {
            self.children.remove(&id);
        }
        Ok(status)
    }

    /// Whether member `id`'s process runs (started here and not ended).
    pub fn running(&mut self, id: u64) -> bool {
        self.children
            .get_mut(&id)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Members started and not stopped here (one may have ended by itself: see
    /// [`Group::running`]).
    pub fn alive(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// Member `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.members[&id].log).unwrap_or_default()
    }

    /// The last `n` lines of member `id`'s log (for errors).
    pub fn tail(&self, id: u64, n: usize) -> String {
        let log = self.log(id);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An operator's connection to member `id`.
    pub fn conn(&self, id: u64) -> Conn {
        self.spec.security.conn(&self.addr(id))
    }

    /// Member `id`'s metrics page (empty when it cannot be read).
    pub fn metrics(&self, id: u64) -> String {
        self.members[&id]
            .metrics
            .as_deref()
            .and_then(|a| http_get(a, "/metrics").ok())
            .unwrap_or_default()
    }

    /// What async work needs to ask the members, without holding the group.
    pub fn handle(&self) -> Handle {
        Handle::new(
            self.members
                .iter()
                .map(|(id, m)| (*id, (m.reached.clone(), m.metrics.clone())))
                .collect(),
            self.alive(),
            self.spec.security.clone(),
        )
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for id in self.alive() {
            self.kill(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_ended_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        // `true` ends at once, whatever its arguments.
        let mut g = Group::new(Spec {
            bin: "true".into(),
            security: Security::Insecure { remote: false },
            args: Vec::new(),
            log_filter: "info".into(),
        });
        g.add(1, Member::loopback(dir.path(), 1).unwrap());
        g.start(1, Start::default()).unwrap();
        while g.running(1) {
            std::thread::yield_now();
        }
        // Reaped by `running`: its PID is free for any other process, so it is not used.
        let e = g.signal(1, libc::SIGTERM).unwrap_err();
        assert!(e.to_string().contains("has ended"), "{e}");
    }
}
