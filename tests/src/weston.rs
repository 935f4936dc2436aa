//! A real Wayland compositor for the wayland trials and the benchmark: Debian's weston, headless
//! (`headless-backend.so` with the pixman renderer, so the output has pixels), its desktop shell
//! with a plain background, no panel, no animations and no input method ([`CONFIG`]), `--debug`
//! (the screenshooter and the debug-stream protocol), on a socket in a private
//! `XDG_RUNTIME_DIR`. (weston 10's kiosk shell maps no window on a seatless headless output.)
//!
//! Also what the trials check against it: its globals as `wayland-info` (Debian's
//! wayland-utils) lists them, a screenshot of the output (`weston-screenshooter`, a PNG decoded
//! here), and the number of client connections it holds. `images/build.sh` installs weston and
//! wayland-utils with the other harness packages.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::paths::TempDir;
use crate::procfs;

/// The socket name inside the runtime dir.
const SOCKET: &str = "svmm-wayland";
/// weston.ini: a solid background ([`BACKGROUND`]) and nothing else on screen, windows shown at
/// once (an animation would be caught half-way by a screenshot), no input method client.
const CONFIG: &str = "[core]\nidle-time=0\n\n[shell]\npanel-position=none\n\
background-color=0xff203040\nlocking=false\nanimation=none\nclose-animation=none\n\
startup-animation=none\nfocus-animation=none\n\n[input-method]\npath=\n";
/// The background colour [`CONFIG`] sets, as `0xRRGGBB`.
pub const BACKGROUND: u32 = 0x203040;
/// How long weston may take to listen, and a screenshot to be written.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const SHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running weston; killed and reaped on drop.
pub struct Weston {
    dir: TempDir,
    child: Child,
    width: u32,
    height: u32,
}

/// One global as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Global {
    /// The registry name (a number).
    pub name: u32,
    /// The interface.
    pub interface: String,
    /// The version offered.
    pub version: u32,
}

/// A decoded screenshot: RGB, 8 bits per channel, rows top to bottom.
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    rgb: Vec<u8>,
}

impl Screenshot {
    /// The pixel at `(x, y)` as `0xRRGGBB`.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        (u32::from(self.rgb[i]) << 16)
            | (u32::from(self.rgb[i + 1]) << 8)
            | u32::from(self.rgb[i + 2])
    }
}

/// Why a program the harness needs is missing, or `None`.
pub fn missing_programs() -> Option<String> {
    let missing: Vec<&str> = [
        "weston",
        "wayland-info",
        "weston-screenshooter",
        "weston-simple-shm",
        "weston-debug",
    ]
    .into_iter()
    .filter(|p| !in_path(p))
    .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (images/build.sh installs weston and wayland-utils)",
            missing.join(", ")
        )
    })
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl Weston {
    /// Starts weston with an output of `width` × `height` and waits until it accepts clients.
    pub fn start(width: u32, height: u32) -> Result<Weston, String> {
        let dir = TempDir::new("weston");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod runtime dir: {e}"))?;
        let log = fs::File::create(dir.path().join("weston.log"))
            .map_err(|e| format!("weston log: {e}"))?;
        let config = dir.file("weston.ini", CONFIG.as_bytes());
        let child = Command::new("weston")
            .args(["--backend=headless-backend.so", "--use-pixman", "--debug"])
            .arg(format!("--config={}", config.display()))
            .arg(format!("--socket={SOCKET}"))
            .arg(format!("--width={width}"))
            .arg(format!("--height={height}"))
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start weston: {e}"))?;
        let mut weston = Weston {
            dir,
            child,
            width,
            height,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while UnixStream::connect(weston.socket()).is_err() {
            if let Ok(Some(status)) = weston.child.try_wait() {
                return Err(format!("weston exited ({status}): {}", weston.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "weston not listening after {START_TIMEOUT:?}: {}",
                    weston.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // svmm run as root connects as its own unprivileged uid (the last of --worker-ids): let
        // any uid reach the socket (search on the runtime dir, write on the socket), as a user
        // would for the uid they run svmm as. [`Weston::only_owner`] undoes it.
        weston.set_modes(0o711, 0o666)?;
        // The desktop shell (a client weston starts) draws the background a moment later.
        loop {
            let shot = weston.screenshot()?;
            if shot.pixel(0, 0) == BACKGROUND && shot.pixel(width - 1, height - 1) == BACKGROUND {
                return Ok(weston);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "weston's background never appeared: {}",
                    weston.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Only weston's own uid may reach its socket again: runtime dir 0700, socket 0755 (what a
    /// session's compositor usually has).
    pub fn only_owner(&self) -> Result<(), String> {
        self.set_modes(0o700, 0o755)
    }

    fn set_modes(&self, dir: u32, socket: u32) -> Result<(), String> {
        for (path, mode) in [
            (self.socket(), socket),
            (self.dir.path().to_path_buf(), dir),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The compositor's socket (what `--device wayland=` takes).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(SOCKET)
    }

    /// The runtime dir.
    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The output's size.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// weston's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of weston's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("weston.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// A command for a client of this compositor.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", SOCKET)
            .stdin(Stdio::null());
        cmd
    }

    /// The globals `wayland-info` sees.
    pub fn globals(&self) -> Result<Vec<Global>, String> {
        let out = self
            .client("wayland-info")
            .output()
            .map_err(|e| format!("wayland-info: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "wayland-info failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let globals = parse_wayland_info(&text);
        if globals.is_empty() {
            return Err(format!("no globals in wayland-info's output:\n{text}"));
        }
        Ok(globals)
    }

    /// A screenshot of the output (`weston-screenshooter`, which writes a PNG in its working
    /// directory).
    pub fn screenshot(&self) -> Result<Screenshot, String> {
        let cwd = TempDir::new("screenshot");
        let mut child = self
            .client("weston-screenshooter")
            .current_dir(cwd.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("weston-screenshooter: {e}"))?;
        let status = wait_timeout(&mut child, SHOT_TIMEOUT)
            .ok_or_else(|| format!("weston-screenshooter hung: {}", self.log_tail()))?;
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        if !status.success() {
            return Err(format!("weston-screenshooter failed ({status}): {err}"));
        }
        let png = fs::read_dir(cwd.path())
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "png"))
            .ok_or_else(|| format!("weston-screenshooter wrote no PNG: {err}"))?;
        decode_png(&png)
    }

    /// Where weston shows the window titled `title`: `(x0, y0, x1, y1)`, end exclusive, from
    /// its scene graph (`weston-debug scene-graph`).
    pub fn window_rect(&self, title: &str) -> Result<(i32, i32, i32, i32), String> {
        let mut child = self
            .client("weston-debug")
            .arg("scene-graph")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("weston-debug: {e}"))?;
        let mut text = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        wait_timeout(&mut child, SHOT_TIMEOUT);
        let needle = format!("'{title}'");
        let mut lines = text.lines().skip_while(|l| !l.contains(&needle));
        lines
            .find_map(|l| l.trim().strip_prefix("position: "))
            .and_then(parse_rect)
            .ok_or_else(|| format!("no window '{title}' in the scene graph:\n{text}"))
    }

    /// Unix-socket fds weston holds: its listening socket and its own, plus one per client
    /// connection (trials compare counts before and after).
    pub fn sockets(&self) -> usize {
        procfs::fds(self.pid())
            .map(|fds| fds.values().filter(|t| t.starts_with("socket:")).count())
            .unwrap_or(0)
    }
}

impl Drop for Weston {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` up to `timeout`; kills it and returns `None` if it does not end.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(x0, y0) -> (x1, y1)` of the scene graph.
fn parse_rect(text: &str) -> Option<(i32, i32, i32, i32)> {
    let nums: Vec<i32> = text
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter(|s| !s.is_empty() && *s != "-")
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [x0, y0, x1, y1] => Some((x0, y0, x1, y1)),
        _ => None,
    }
}

/// The `interface: 'NAME', version: V, name: N` lines of `wayland-info`.
pub fn parse_wayland_info(text: &str) -> Vec<Global> {
    let mut globals = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("interface: '") else {
            continue;
        };
        let Some((interface, rest)) = rest.split_once('\'') else {
            continue;
        };
        let field = |key: &str| {
            rest.split(',')
                .find_map(|part| part.trim().strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if let (Some(version), Some(name)) = (field("version:"), field("name:")) {
            globals.push(Global {
                name,
                interface: interface.to_string(),
                version,
            });
        }
    }
    globals
}

/// Decodes an 8-bit RGB or RGBA PNG.
pub fn decode_png(path: &Path) -> Result<Screenshot, String> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| format!("PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "PNG too large".to_string())?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG: {e}"))?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(format!("PNG colour type {other:?}")),
    };
    let rgb = buf[..info.buffer_size()]
        .chunks(info.line_size)
        .flat_map(|row| {
            row.chunks(channels)
                .take(info.width as usize)
                .flat_map(|p| p[..3].to_vec())
        })
        .collect();
    Ok(Screenshot {
        width: info.width,
        height: info.height,
        rgb,
    })
}

/// The test guest's `wl_shm` pattern (images/testguest/src/tests/wl/mod.rs): pixel `(x, y)`
/// as `0xRRGGBB`.
pub fn pattern(x: u32, y: u32, seed: u32) -> u32 {
    let r = (x.wrapping_mul(3).wrapping_add(seed)) & 0xff;
    let g = (y.wrapping_mul(5).wrapping_add(seed >> 8)) & 0xff;
    let b = ((x ^ y).wrapping_add(seed >> 16)) & 0xff;
    (r << 16) | (g << 8) | b
}

/// Compares every pixel of `shot` with the pattern: `Ok(pixels checked)`, or the number of
/// mismatches and the first few.
pub fn check_pattern(shot: &Screenshot, width: u32, height: u32, seed: u32) -> Result<u64, String> {
    if (shot.width, shot.height) != (width, height) {
        return Err(format!(
            "screenshot is {}x{}, the guest's buffer {width}x{height}",
            shot.width, shot.height
        ));
    }
    let mut bad = Vec::new();
    let mut count = 0u64;
    for y in 0..height {
        for x in 0..width {
            let (got, want) = (shot.pixel(x, y), pattern(x, y, seed));
            if got != want {
                count += 1;
                if bad.len() < 5 {
                    bad.push(format!("({x},{y}) {got:06x} != {want:06x}"));
                }
            }
        }
    }
    if count > 0 {
        return Err(format!("{count} pixels differ: {}", bad.join(", ")));
    }
    Ok(u64::from(width) * u64::from(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wayland_info_lines_parse() {
        let text = "interface: 'wl_compositor',                              version:  4, name:  1\n\
                    \tformats (fourcc):\n\
                    interface: 'xdg_wm_base',                                version:  3, name: 16\n";
        assert_eq!(
            parse_wayland_info(text),
            vec![
                Global {
                    name: 1,
                    interface: "wl_compositor".into(),
                    version: 4
                },
                Global {
                    name: 16,
                    interface: "xdg_wm_base".into(),
                    version: 3
                },
            ]
        );
    }

    #[test]
    fn scene_graph_rects_parse() {
        assert_eq!(
            parse_rect("(133, 36) -> (383, 286)"),
            Some((133, 36, 383, 286))
        );
        assert_eq!(parse_rect("(0, 0) -> (400)"), None);
    }

    #[test]
    fn pattern_matches_the_guests() {
        // Values computed by hand from the guest's formula.
        assert_eq!(pattern(0, 0, 0x00a5_3c96), 0x963ca5);
        assert_eq!(pattern(1, 2, 0), 0x030a03);
    }
}
