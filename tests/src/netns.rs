//! Network namespaces for the net trials: every frame a trial sends stays inside a namespace it
//! made itself, with its own taps, veths and addresses, torn down when the [`NetNs`] is
//! dropped. The peer (`svmm-netpeer`, [`crate::netpeer`]) and svmm run inside it through
//! `ip netns exec` ([`NetNs::exec`]), which also mounts the namespace's own `/sys`.
//!
//! Needs root (creating namespaces and taps) and iproute2's `ip` (`images/build.sh` installs
//! it); [`missing_reason`] says why the trials cannot run where they cannot.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why net trials cannot run on this host, if they cannot: not root, or no `ip`.
pub fn missing_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root: creating network namespaces and taps needs root".into());
    }
    if which("ip").is_none() {
        return Some("no `ip` (iproute2) on PATH: images/build.sh installs it".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun on this host".into());
    }
    None
}

/// Why passt trials cannot run here (beyond [`missing_reason`]).
pub fn passt_missing_reason() -> Option<String> {
    missing_reason().or_else(|| {
        which("passt")
            .is_none()
            .then(|| "passt is not installed: images/build.sh installs it".to_string())
    })
}

/// `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A network namespace of this test process, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new namespace `svmm-<tag>-<pid>` with its loopback up.
    pub fn new(tag: &str) -> io::Result<NetNs> {
        let name = format!("svmm-{tag}-{}", std::process::id());
        // A leftover of a crashed earlier run of this very pid (unlikely) would make `add` fail.
        let _ = run(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A persistent tap `name` (`vnet_hdr`, and `multi_queue` if asked) with `cidr` on it, up.
    pub fn tap(&self, name: &str, cidr: &str, multi_queue: bool) -> io::Result<()> {
        let mut add = vec!["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"];
        if multi_queue {
            add.push("multi_queue");
        }
        self.ip(&add)?;
        self.ip(&["addr", "add", cidr, "dev", name])?;
        self.ip(&["link", "set", name, "up"])
    }

    /// A veth pair whose end `name` has `cidr` and carries the default route via `gateway`:
    /// what passt needs to find an interface to copy its guest addresses from.
    pub fn uplink(&self, name: &str, cidr: &str, gateway: &str) -> io::Result<()> {
        let other = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &other])?;
        self.ip(&["addr", "add", cidr, "dev", name])?;
        self.ip(&["link", "set", &other, "up"])?;
        self.ip(&["link", "set", name, "up"])?;
        self.ip(&["route", "add", "default", "via", gateway, "dev", name])
    }

    /// The wrapper that runs a command inside the namespace: `ip netns exec NS`.
    pub fn exec(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// A counter of interface `dev` (`rx_packets`, `tx_bytes`, ...), read inside the namespace.
    pub fn counter(&self, dev: &str, counter: &str) -> io::Result<u64> {
        let path = format!("/sys/class/net/{dev}/statistics/{counter}");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", &path])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("{path}: {e}")))
    }

    /// Starts the peer `bin` (an integration test's `env!("CARGO_BIN_EXE_svmm-netpeer")`)
    /// inside the namespace with `args` and waits for its `netpeer: ready`.
    pub fn peer(&self, bin: &str, args: &[&str]) -> io::Result<Peer> {
        Peer::start(self, bin, args)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace takes its taps and veths with it.
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

fn run(argv: &[&str]) -> io::Result<()> {
    let out = Command::new(argv[0]).args(&argv[1..]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A running `svmm-netpeer`: stops when dropped (its stdin closes) or [`Peer::stop`]ped.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<String>>,
}

impl Peer {
    fn start(ns: &NetNs, bin: &str, args: &[&str]) -> io::Result<Peer> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), bin])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let peer = Peer {
            stdin: child.stdin.take(),
            child,
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !peer.output().contains("netpeer: ready") {
            if Instant::now() > deadline || peer.output().contains("svmm-netpeer:") {
                let mut peer = peer;
                let out = peer.stop();
                return Err(io::Error::other(format!("the peer did not start:\n{out}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(peer)
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Stops it (closes its stdin, waits for it, up to 10 s) and returns all it printed.
    pub fn stop(&mut self) -> String {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the reader threads take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        self.output()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}
