//! report.html in a real browser: a real run's report, opened in headless
//! Chromium, logs nothing to the console (an SVG attribute Chromium cannot
//! parse is a console error), and every chart it draws has data, at a useful
//! width. A probe script appended to a copy of the page (the report itself has
//! no scripts) writes what it found into the DOM, which `--dump-dom` returns.
//!
//! Without Chromium the test prints `skipped` and passes, unless
//! `CHATSCALE_REQUIRE_BROWSER=1` (CI sets it), where a missing browser fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::engine_support::{opts, run, scenario, target, Fault, SMALL};

/// The probe: counts charts, names those without a line or dot and those
/// narrower than they should be, and reports uncaught errors.
const PROBE: &str = r#"<pre id="probe"></pre><script>
(function () {
  var out = { charts: 0, empty: [], narrow: [], page: document.body.clientWidth };
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    out.charts += 1;
    var name = svg.getAttribute('aria-label');
    if (!svg.querySelector('.series')) out.empty.push(name);
    var w = svg.getBoundingClientRect().width;
    if (w < out.page * 0.4) out.narrow.push(name + ' ' + Math.round(w) + 'px');
  });
  document.getElementById('probe').textContent = 'PROBE' + JSON.stringify(out) + 'EBORP';
})();
</script>"#;

/// The browser to use: `CHATSCALE_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHATSCALE_CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs Chromium headless on `page`, bounded in time; returns (DOM, stderr).
fn dump_dom(browser: &Path, page: &Path, profile: &Path) -> (String, String) {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_report_renders_in_chromium_without_errors_or_empty_charts() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CHATSCALE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "CHATSCALE_REQUIRE_BROWSER=1 but no chromium on PATH (or CHATSCALE_CHROMIUM)"
        );
        println!("skipped: no chromium on PATH (set CHATSCALE_CHROMIUM to point at one)");
        return;
    };
    let t = target(Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{SMALL}\n[[phase]]\nname = \"ramp\"\nduration = \"1s\"\nonline = 8\n\n[[phase]]\nname = \"steady\"\nduration = \"2s\"\nonline = 8\nmessage_rate = \"40/s\"\ndisconnect_rate = \"2/s\"\n[thresholds]\n\"lost\" = \"== 0\"\n"
    );
    let path = scenario(dir.path(), "browser", Some(&t.url), &body);
    let out = dir.path().join("out");
    let (_, report) = run(opts(path, out.clone())).await;
    t.server.stop().await.unwrap();
    assert!(
        report["metrics"]["messages_acked"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for bad in ["NaN", "=\"inf", ",inf", "inf,", " inf "] {
        assert!(
            !html.contains(bad),
            "no unplottable number reaches the page: {bad}"
        );
    }
    assert!(
        !html.contains("<script"),
        "the report itself has no scripts"
    );
    let page = dir.path().join("probed.html");
    std::fs::write(&page, html.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let profile = dir.path().join("profile");
    let (dom, stderr) = dump_dom(&browser, &page, &profile);

    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
    let probe = dom
        .split("PROBE")
        .nth(1)
        .and_then(|r| r.split("EBORP").next())
        .unwrap_or_else(|| panic!("the probe ran:\n{dom}\n{stderr}"))
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    let probe: serde_json::Value = serde_json::from_str(&probe).unwrap();
    // Latency over time for several metrics, connections, memory, distribution.
    assert!(probe["charts"].as_u64().unwrap() >= 5, "{probe}");
    assert_eq!(
        probe["empty"],
        serde_json::json!([]),
        "charts without data: {probe}"
    );
    assert_eq!(
        probe["narrow"],
        serde_json::json!([]),
        "charts narrower than 40% of the page: {probe}"
    );
    // What report.md has, the page has too.
    for section in [
        "Phases",
        "Throughput and counters",
        "Audit",
        "Generator health",
        "Projection",
        "heartbeats",
        "generator memory per connection",
    ] {
        assert!(dom.contains(section), "{section} missing from the page");
    }
    // No history reads in this run: said, not drawn as zeros.
    assert!(
        dom.contains("no samples: history_latency"),
        "history is n/a"
    );
}
