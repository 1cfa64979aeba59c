//! loadgen's one integration-test binary. Each module is one area:
mod report_support; // shared: a synthetic merged outcome and a report built from it
mod report_schema; // report.json validates against loadgen/report.schema.json
mod report_thresholds; // [thresholds] parsing (every error path) and evaluation
mod report_projection; // projection arithmetic, unmeasured limits, config validation
mod report_files; // write_all: hlog round trip through hdrhistogram, self-contained HTML, Markdown
mod report_compare; // loadgen compare: ratios to the first report, unreadable files
mod report_baseline; // the --baseline gate: pass, regressions, noise floor, bad baseline
