use super::*;

fn limits(max_connections: usize, max_per_ip: usize) -> Limits {
    Limits {
        max_connections,
        max_per_ip,
        max_per_identity: 3,
        reserved: 2,
        reserved_per_ip: 1,
        ..Limits::default()
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, n])
}

fn addr(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(n), port)
}

fn node(n: &str) -> Who {
    Some(Identity::Node(n.into()))
}

fn op() -> Who {
    Some(Identity::Operator("alice".into()))
}

/// Admit and establish a connection from `n:port` naming `who`.
fn open(t: &mut Table, l: &Limits, n: u8, port: u16, who: Who, now: Instant) -> Arc<Conn> {
    let a = t.admit(ip(n), l, now).expect("admitted");
    t.established(a.id, addr(n, port), who, l, now)
        .expect("established")
}

#[test]
fn handshakes_are_evicted_first_then_the_idlest_connection() {
    let l = limits(100, 3);
    let mut t = Table::default();
    let t0 = Instant::now();
    let old = open(&mut t, &l, 1, 1, node("a"), t0);
    let newer = open(&mut t, &l, 1, 2, node("b"), t0 + Duration::from_secs(5));
    let h = t.admit(ip(1), &l, t0).unwrap();
    // The address is full: the handshake goes first.
    let now = t0 + Duration::from_secs(10);
    let third = t.admit(ip(1), &l, now).unwrap();
    assert!(h.evict.is_cancelled());
    assert!(!old.close.is_cancelled());
    t.release(h.id, ip(1));
    let third = t
        .established(third.id, addr(1, 3), node("c"), &l, now)
        .unwrap();
    let _streaming = third.begin();
    // Then the connection idle the longest.
    let busy = newer.begin();
    t.admit(ip(1), &l, now).unwrap();
    assert!(old.close.is_cancelled(), "idle 10 s: closed to make room");
    assert!(!newer.close.is_cancelled());
    drop(busy);
    assert_eq!(t.evicted, 2);
}

#[test]
fn busy_and_just_idle_connections_stay_and_operators_keep_room() {
    let l = limits(100, 2);
    let mut t = Table::default();
    let t0 = Instant::now();
    let a = open(&mut t, &l, 1, 1, node("a"), t0);
    let busy = a.begin();
    let b = open(&mut t, &l, 1, 2, node("b"), t0);
    // Idle for less than EVICTABLE_AFTER, and busy: neither is closed. One slot is kept for
    // an operator; taken by another node, it is dropped after the handshake.
    let now = t0 + Duration::from_secs(1);
    let r = t.admit(ip(1), &l, now).unwrap();
    assert_eq!(
        t.established(r.id, addr(1, 3), node("c"), &l, now).err(),
        Some(Refusal::Reserved)
    );
    t.release(r.id, ip(1));
    // A handshake in a kept slot, evicted by a newcomer: the newcomer's slot is kept too.
    let r = t.admit(ip(1), &l, now).unwrap();
    let newcomer = t.admit(ip(1), &l, now).unwrap();
    assert!(r.evict.is_cancelled());
    t.release(r.id, ip(1));
    assert_eq!(
        t.established(newcomer.id, addr(1, 5), node("d"), &l, now)
            .err(),
        Some(Refusal::Reserved)
    );
    t.release(newcomer.id, ip(1));
    // An operator takes it; past the reserve, refused.
    let r = t.admit(ip(1), &l, now).unwrap();
    let operator = t.established(r.id, addr(1, 4), op(), &l, now).unwrap();
    assert_eq!(t.admit(ip(1), &l, now).err(), Some(Refusal::Full));
    // Later, an idle node connection makes room; the operator's idle one is never closed.
    let later = now + Duration::from_secs(30);
    drop(busy);
    let n = t.admit(ip(1), &l, later).unwrap();
    assert!(
        a.close.is_cancelled() || b.close.is_cancelled(),
        "an idle node connection made room"
    );
    assert!(!operator.close.is_cancelled());
    t.release(n.id, ip(1));
}

#[test]
fn one_identity_cannot_take_every_slot() {
    let l = limits(100, 100);
    let mut t = Table::default();
    let t0 = Instant::now();
    let conns: Vec<Arc<Conn>> = (0..3)
        .map(|p| open(&mut t, &l, 1, p, node("x"), t0))
        .collect();
    let _busy: Vec<Busy> = conns.iter().map(Conn::begin).collect();
    let a = t.admit(ip(1), &l, t0).unwrap();
    assert_eq!(
        t.established(a.id, addr(1, 9), node("x"), &l, t0).err(),
        Some(Refusal::IdentityFull)
    );
    t.release(a.id, ip(1));
    // Another identity from the same address still gets in.
    open(&mut t, &l, 1, 10, node("y"), t0);
    // Once one of x's is idle long enough, a new one of x replaces it.
    drop(_busy);
    let later = t0 + Duration::from_secs(5);
    open(&mut t, &l, 1, 11, node("x"), later);
    assert_eq!(conns.iter().filter(|c| c.close.is_cancelled()).count(), 1);
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let l = Limits {
        idle_timeout: Duration::from_secs(60),
        ..limits(100, 100)
    };
    let mut t = Table::default();
    let t0 = Instant::now();
    let idle = open(&mut t, &l, 1, 1, op(), t0);
    let streaming = open(&mut t, &l, 1, 2, node("a"), t0);
    let _stream = streaming.begin();
    assert_eq!(t.close_idle(&l, t0 + Duration::from_secs(59)), 0);
    assert_eq!(t.close_idle(&l, t0 + Duration::from_secs(61)), 1);
    assert!(idle.close.is_cancelled() && !streaming.close.is_cancelled());
    assert!(t.by_addr(&addr(1, 1)).is_none() && t.by_addr(&addr(1, 2)).is_some());
}
