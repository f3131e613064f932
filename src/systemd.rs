//! The systemd notification protocol (sd_notify(3)): `READY=1` once the listeners are bound,
//! `WATCHDOG=1` keep-alives, `STOPPING=1` when draining. A datagram to the socket systemd names in
//! `$NOTIFY_SOCKET`; nothing happens when ladderd does not run under systemd.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`) to systemd. `Ok(false)` when not run by systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(path) if !path.is_empty() => notify_to(&path, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket at `path`; a leading `@` names a socket in Linux's
/// abstract namespace, as systemd uses (sd_notify(3)).
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// How often to send `WATCHDOG=1`: half the interval systemd expects (`$WATCHDOG_USEC`, set by
/// `WatchdogSec=`), as sd_watchdog_enabled(3) advises. `None` when the watchdog is off or meant
/// for another process (`$WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// What to send when a reload begins: `RELOADING=1` with the monotonic time it began, as
/// sd_notify(3) asks (systemd then waits for the next `READY=1`).
pub fn reloading_message() -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.to_str().expect("utf-8 path"), "READY=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_state_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ladderd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        notify_to(&format!("@{name}"), "WATCHDOG=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let before = std::fs::read_to_string("/proc/uptime").expect("uptime");
        let msg = reloading_message();
        let (first, second) = msg.split_once('\n').expect("two lines");
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = second.strip_prefix("MONOTONIC_USEC=").expect("field").parse().expect("number");
        // CLOCK_MONOTONIC does not count suspend, so it is at most the boot-time uptime.
        let uptime: f64 = before.split_whitespace().next().expect("field").parse().expect("seconds");
        assert!(usec > 0 && (usec as f64) / 1e6 <= uptime + 1.0, "{usec} µs vs uptime {uptime} s");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/ladderd/notify", "READY=1").is_err());
    }
}
