//! virtio-wl against a real compositor (Debian's weston, headless, see `tests::weston`): the
//! screenshot path checked with a host client first, then the test guest's Wayland clients
//! through svmm's wayland device, sandboxed and in-process.

use std::time::Duration;

use tests::suite::TrialResult;
use tests::weston::{self, Weston, BACKGROUND};
use tests::Suite;

/// The output the trials use: big enough for weston-simple-shm's 250 × 250 window.
const OUTPUT: (u32, u32) = (400, 300);

/// weston-simple-shm on the host: the screenshot shows its window exactly where the scene
/// graph says, and only there. The baseline for the guest's pixel check.
fn host_client_baseline() -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let before = weston.screenshot()?;
    if (0..before.height).any(|y| (0..before.width).any(|x| before.pixel(x, y) != BACKGROUND)) {
        return Err(format!("the empty output is not all background {BACKGROUND:06x}").into());
    }
    let mut client = weston
        .client("weston-simple-shm")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("weston-simple-shm: {e}"))?;
    let result = (|| -> TrialResult {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let rect = loop {
            match weston.window_rect("simple-shm") {
                Ok(rect) => break rect,
                Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        // Let it draw a frame or two.
        std::thread::sleep(Duration::from_millis(300));
        let shot = weston.screenshot()?;
        let (x0, y0, x1, y1) = rect;
        let mut inside_changed = 0u64;
        for y in 0..shot.height as i32 {
            for x in 0..shot.width as i32 {
                let changed = shot.pixel(x as u32, y as u32) != BACKGROUND;
                let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
                if changed && !inside {
                    return Err(
                        format!("pixel ({x},{y}) changed outside the window {rect:?}").into(),
                    );
                }
                inside_changed += u64::from(changed && inside);
            }
        }
        let area = ((x1 - x0) * (y1 - y0)) as u64;
        if area != 250 * 250 || inside_changed * 10 < area * 9 {
            return Err(format!("window {rect:?}: {inside_changed} of {area} pixels drawn").into());
        }
        eprintln!("wayland: host baseline: simple-shm at {rect:?}, {inside_changed} pixels drawn");
        Ok(())
    })();
    let _ = client.kill();
    let _ = client.wait();
    result
}

fn main() {
    let missing = weston::missing_programs();
    Suite::new("wayland")
        .sequential()
        .test_unless(
            "host_client_baseline",
            missing.clone(),
            host_client_baseline,
        )
        .run();
}
