//! Child processes that die with the process that started them, whatever the way it ends (a
//! panic, SIGKILL, Ctrl-C): the control plane, fluentd, nats-server, and the demo's children.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process: spawn
//! from a thread that lives as long as the child should (the main thread, or a parked one as
//! [`crate::cluster::env`] does).

/// [`DieWithParent::die_with_parent`] for `std` and tokio commands.
pub trait DieWithParent {
    /// Have the child killed (SIGKILL) when the thread that spawns it ends.
    fn die_with_parent(&mut self) -> &mut Self;
}

/// Run in the child between fork and exec.
fn kill_me_with_my_parent() -> std::io::Result<()> {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    match unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

impl DieWithParent for std::process::Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure only makes an async-signal-safe system call.
        unsafe { self.pre_exec(kill_me_with_my_parent) }
    }
}

impl DieWithParent for tokio::process::Command {
    fn die_with_parent(&mut self) -> &mut Self {
        // SAFETY: the closure only makes an async-signal-safe system call.
        unsafe { self.pre_exec(kill_me_with_my_parent) }
    }
}
