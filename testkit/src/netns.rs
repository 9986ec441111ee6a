//! A network namespace of the test's own, joined to this machine by a veth pair, for the few
//! tests that need a non-loopback address (the API server refuses to proxy to loopback).
//!
//! Test traffic goes only to loopback or to such a namespace: never to this machine's own
//! interface addresses. The namespace (and with it the veth pair) is removed on drop, also
//! when the test fails. Needs root and iproute2's `ip` (CI has both).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace with one address, reachable from this machine's root namespace.
pub struct NetNs {
    name: String,
    /// The namespace's address (the root side of the veth pair has the other one of its /30).
    pub addr: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Create a namespace with a veth pair on a /30 of 10.250.0.0/16 that no interface here
    /// uses yet; panics with what is missing when that cannot be done.
    pub fn create() -> NetNs {
        let mut last = String::new();
        for _ in 0..64 {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            // Distinct per process and per call, so parallel test binaries do not collide.
            let slot = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 16_000;
            let (third, fourth) = ((slot / 64) as u8, ((slot % 64) * 4) as u8);
            let host = Ipv4Addr::new(10, 250, third, fourth + 1);
            let addr = Ipv4Addr::new(10, 250, third, fourth + 2);
            let ns = NetNs {
                name: format!("logsocket-test-{}-{n}", std::process::id()),
                addr,
            };
            let (outer, inner) = (format!("lsh{slot}"), format!("lsn{slot}"));
            let result = (|| {
                ip(&["netns", "add", &ns.name])?;
                ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
                ip(&["link", "set", &inner, "netns", &ns.name])?;
                ip(&["addr", "add", &format!("{host}/30"), "dev", &outer])?;
                ip(&["link", "set", &outer, "up"])?;
                ip(&["-n", &ns.name, "addr", "add", &format!("{addr}/30"), "dev", &inner])?;
                ip(&["-n", &ns.name, "link", "set", &inner, "up"])?;
                ip(&["-n", &ns.name, "link", "set", "lo", "up"])
            })();
            match result {
                Ok(()) => return ns,
                Err(e) => {
                    // The veth may exist without the namespace having taken it.
                    let _ = ip(&["link", "del", &outer]);
                    last = e;
                }
            }
        }
        panic!("cannot create a network namespace for this test (it needs root and iproute2): {last}");
    }

    /// A listening socket on the namespace's address, made inside the namespace (a socket
    /// stays in the namespace it was created in); port 0 picks a free port.
    pub fn bind(&self, port: u16) -> tokio::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::from((self.addr, port));
        // setns changes the calling thread only: do it on a thread of its own.
        let listener = std::thread::spawn(move || -> Result<TcpListener, String> {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: setns on a valid namespace fd; it affects only this short-lived thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(listener)
        })
        .join()
        .expect("the namespace thread")
        .unwrap_or_else(|e| panic!("cannot listen inside the test's network namespace: {e}"));
        tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth end inside it, and with it the pair.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not remove the test's network namespace {}: {e}", self.name);
        }
    }
}
