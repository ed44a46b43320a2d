//! The table of connections the listener keeps, and its decisions (no I/O: the listener and
//! the request layer act on what it says). Every connection holds one of `max_connections`
//! slots and one of `max_per_ip` of its address; once its TLS handshake is done it is known by
//! the identity its client certificate names, and holds one of `max_per_identity` of that
//! identity. Requests in flight are counted per connection ([`super::activity`]):
//! * a connection without a request or stream in flight for `idle_timeout` is closed;
//! * when a limit is reached, room is made by dropping the oldest connection still
//!   handshaking, else the connection idle the longest (idle for `EVICTABLE_AFTER` at least;
//!   never an operator's); only when neither exists is the newcomer refused;
//! * past the address and overall limits, a few slots are kept for operators
//!   (`reserved_per_ip`, `reserved`): a connection taking one is dropped after its handshake
//!   unless its certificate names an operator, so `palisadectl` always gets in;
//! * an identity at its limit makes room among its own idle connections, else its new one is
//!   refused: one certificate cannot take every slot of an address.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth::Identity;

/// A connection idle for less than this is never closed to make room (a replica's Raft
/// channel between heartbeats, `palisadectl` between two calls).
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(2);

/// Bounds on connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// Connections one certificate identity may hold (all addresses together).
    pub max_per_identity: usize,
    /// Slots past `max_connections` and `max_per_ip` kept for operators.
    pub reserved: usize,
    pub reserved_per_ip: usize,
    pub handshake_timeout: Duration,
    /// A connection without a request or stream in flight this long is closed.
    pub idle_timeout: Duration,
    /// TCP keepalive on accepted connections.
    pub tcp_keepalive: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 16_384,
            max_per_ip: 1024,
            max_per_identity: 64,
            reserved: 64,
            reserved_per_ip: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// Who a connection is, once its handshake is done: the identity its certificate names
/// (`None`: a valid certificate naming none Palisade knows).
pub type Who = Option<Identity>;

fn operator(who: &Who) -> bool {
    matches!(who, Some(Identity::Operator(_) | Identity::Anonymous))
}

/// One established connection.
pub struct Conn {
    pub id: u64,
    ip: IpAddr,
    addr: SocketAddr,
    who: Who,
    /// Requests and streams in flight.
    active: AtomicUsize,
    /// Since when none has been in flight.
    idle_since: Mutex<Instant>,
    /// Cancelled to close it.
    pub close: CancellationToken,
}

impl Conn {
    /// A request or stream begins; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Conn>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// How long it has been idle (`None`: a request or stream is in flight).
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().expect("idle lock");
        Some(now.saturating_duration_since(since))
    }
}

/// A request or stream in flight on a connection.
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: the reaper must never see no request in flight with an old time.
        let mut since = self.0.idle_since.lock().expect("idle lock");
        *since = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection is dropped or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is held by connections that are handshaking or busy.
    Full,
    /// Its handshake was dropped to make room for another.
    Evicted,
    /// It took a slot kept for operators and its certificate names none.
    Reserved,
    /// Its identity holds its limit of connections, all busy.
    IdentityFull,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "refused",
            Refusal::Evicted => "evicted",
            Refusal::Reserved => "reserved",
            Refusal::IdentityFull => "identity-limit",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Full => "connection limit reached and nothing handshaking or idle to drop",
            Refusal::Evicted => "dropped to make room for a newer connection",
            Refusal::Reserved => {
                "the last slots are kept for operators, and its certificate names none"
            }
            Refusal::IdentityFull => {
                "its certificate's identity holds its limit of connections, all busy"
            }
        }
    }
}

/// Connections, per address and identity; those handshaking (oldest first).
#[derive(Default)]
pub struct Table {
    pub open: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_who: HashMap<Who, usize>,
    /// id -> (address, whether it took a reserved slot, how to drop it)
    handshaking: BTreeMap<u64, (IpAddr, bool, CancellationToken)>,
    established: BTreeMap<u64, Arc<Conn>>,
    by_addr: HashMap<SocketAddr, Arc<Conn>>,
    next: u64,
    /// Connections dropped to make room (for the metric).
    pub evicted: u64,
}

/// A connection admitted, handshaking.
pub struct Admitted {
    pub id: u64,
    /// Cancelled when it is dropped to make room.
    pub evict: CancellationToken,
}

impl Table {
    /// Make room for a connection from `ip` if a limit is reached; take a slot for it.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let on_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let over_ip = on_ip >= limits.max_per_ip;
        let over_all = self.open >= limits.max_connections;
        let mut reserved = false;
        if over_ip || over_all {
            let mine = |vip: &IpAddr| !over_ip || *vip == ip;
            let handshake = self
                .handshaking
                .iter()
                .find(|(_, (vip, _, _))| mine(vip))
                .map(|(id, _)| *id);
            if let Some(victim) = handshake {
                let (_, was_reserved, token) = self.handshaking.remove(&victim).expect("found");
                // Its task ends at once and gives its slot back; until then one over. The
                // newcomer takes its place: a slot kept for operators stays kept.
                reserved = was_reserved;
                token.cancel();
                self.evicted += 1;
            } else if let Some(c) = self.idlest(now, |c| mine(&c.ip) && !operator(&c.who)) {
                c.close.cancel();
                self.forget(c.id);
                self.evicted += 1;
            } else if on_ip < limits.max_per_ip + limits.reserved_per_ip
                && self.open < limits.max_connections + limits.reserved
            {
                reserved = true;
            } else {
                return Err(Refusal::Full);
            }
        }
        self.open += 1;
        *self.per_ip.entry(ip).or_default() += 1;
        self.next += 1;
        let id = self.next;
        let evict = CancellationToken::new();
        self.handshaking.insert(id, (ip, reserved, evict.clone()));
        Ok(Admitted { id, evict })
    }

    /// The established connection idle the longest (for `EVICTABLE_AFTER` at least) among
    /// those `which` accepts.
    fn idlest(&self, now: Instant, which: impl Fn(&Conn) -> bool) -> Option<Arc<Conn>> {
        self.established
            .values()
            .filter(|c| which(c))
            .filter_map(|c| Some((c.idle_for(now)?, c)))
            .filter(|(idle, _)| *idle >= EVICTABLE_AFTER)
            .max_by_key(|(idle, c)| (*idle, std::cmp::Reverse(c.id)))
            .map(|(_, c)| c.clone())
    }

    /// The handshake of `id` ended, from `addr`, naming `who`: established, or why it is
    /// dropped (its slot is given back when the caller drops it).
    pub fn established(
        &mut self,
        id: u64,
        addr: SocketAddr,
        who: Who,
        limits: &Limits,
        now: Instant,
    ) -> Result<Arc<Conn>, Refusal> {
        let Some((ip, reserved, _)) = self.handshaking.remove(&id) else {
            return Err(Refusal::Evicted);
        };
        // A slot kept for operators, still needed as one (others may have closed meanwhile).
        let still_over = self.per_ip.get(&ip).copied().unwrap_or(0) > limits.max_per_ip
            || self.open > limits.max_connections;
        if reserved && still_over && !operator(&who) {
            return Err(Refusal::Reserved);
        }
        if self.per_who.get(&who).copied().unwrap_or(0) >= limits.max_per_identity
            && who != Some(Identity::Anonymous)
        {
            // Its own idle connections make room; a busy one is never closed for it.
            match self.idlest(now, |c| c.who == who) {
                Some(c) => {
                    c.close.cancel();
                    self.forget(c.id);
                    self.evicted += 1;
                }
                None => return Err(Refusal::IdentityFull),
            }
        }
        let conn = Arc::new(Conn {
            id,
            ip,
            addr,
            who: who.clone(),
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            close: CancellationToken::new(),
        });
        *self.per_who.entry(who).or_default() += 1;
        self.established.insert(id, conn.clone());
        self.by_addr.insert(addr, conn.clone());
        Ok(conn)
    }

    /// No longer counted as established (closed, or being closed); its address slot is given
    /// back by [`Table::release`].
    fn forget(&mut self, id: u64) {
        let Some(c) = self.established.remove(&id) else {
            return;
        };
        if self.by_addr.get(&c.addr).is_some_and(|x| x.id == id) {
            self.by_addr.remove(&c.addr);
        }
        if let Some(n) = self.per_who.get_mut(&c.who) {
            *n -= 1;
            if *n == 0 {
                self.per_who.remove(&c.who);
            }
        }
    }

    /// Connection `id` from `ip` is gone: its slots are free.
    pub fn release(&mut self, id: u64, ip: IpAddr) {
        self.handshaking.remove(&id);
        self.forget(id);
        self.open -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// The connection at `addr` (for the request layer).
    pub fn by_addr(&self, addr: &SocketAddr) -> Option<Arc<Conn>> {
        self.by_addr.get(addr).cloned()
    }

    /// Close every connection idle for `limits.idle_timeout`; how many.
    pub fn close_idle(&mut self, limits: &Limits, now: Instant) -> usize {
        let idle: Vec<u64> = self
            .established
            .values()
            .filter(|c| c.idle_for(now).is_some_and(|d| d >= limits.idle_timeout))
            .map(|c| c.id)
            .collect();
        for id in &idle {
            if let Some(c) = self.established.get(id) {
                c.close.cancel();
            }
            self.forget(*id);
        }
        idle.len()
    }
}

#[cfg(test)]
mod tests;
