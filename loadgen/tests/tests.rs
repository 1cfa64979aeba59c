//! loadgen's one integration-test binary. Each module is one area:

/// Checks before anything starts: every bad input exits 2, said once, no panic.
mod cli_checks;
/// README.md and docs/*.md: relative links resolve, quoted commands parse.
mod docs_check;
/// The per-device audit, send delay, source addresses, through a faulty proxy.
mod engine_audit;
/// History reads (`history_rate`): pages read over HTTP, history_latency recorded.
mod engine_history;
/// End-to-end runs: exit codes, audit faults, open model under a stall, embedded child.
mod engine_runs;
/// Scenario files: all of scenarios/ parse, defaults, every validation error.
mod engine_scenarios;
/// Shared: a server behind a fault-injecting WebSocket proxy, in-process runs.
mod engine_support;
/// TLS: a run against an https:// server whose CA comes from --ca-file.
mod engine_tls;
/// Fleet scale: embedded clusters, node faults and failover, workers auto,
/// exact fan-out with workers, shards merged, Ctrl-C of a multi-process run.
mod fleet;
/// Provisioning: bulk and one request per object make the same population;
/// the audit reads only the inboxes a message could have reached.
mod provisioning;
/// The --baseline gate: pass, regressions, noise floor, bad baseline.
mod report_baseline;
/// report.html in headless Chromium: no console error, no empty chart.
mod report_browser;
/// `loadgen compare`: ratios to the first report, unreadable files.
mod report_compare;
/// `write_all`: hlog round trip through hdrhistogram, self-contained HTML, Markdown.
mod report_files;
/// Merging run directories: read back exactly, shards add up, thresholds re-judged.
mod report_merge;
/// Projection arithmetic, unmeasured limits, config validation.
mod report_projection;
/// `report.json` validates against loadgen/report.schema.json.
mod report_schema;
/// Shared: a synthetic merged outcome and a report built from it.
mod report_support;
/// `[thresholds]` parsing (every error path) and evaluation.
mod report_thresholds;
/// The verdict and its exit status; report.junit.xml read back as CI reads it.
mod report_verdict;
/// Scale at test size: thousands of devices over several source addresses,
/// too few embedded nodes refused with the arithmetic, no orphaned server.
mod scale;
