//! loadgen's one integration-test binary. Each module is one area:
mod report_support; // shared: a synthetic merged outcome and a report built from it
mod report_schema; // report.json validates against loadgen/report.schema.json
mod report_thresholds; // [thresholds] parsing (every error path) and evaluation
mod report_projection; // projection arithmetic, unmeasured limits, config validation
mod report_files; // write_all: hlog round trip through hdrhistogram, self-contained HTML, Markdown
mod report_compare; // loadgen compare: ratios to the first report, unreadable files
mod report_baseline; // the --baseline gate: pass, regressions, noise floor, bad baseline
mod engine_support; // shared: a server behind a fault-injecting WebSocket proxy, in-process runs
mod engine_scenarios; // scenario files: all of scenarios/ parse, defaults, every validation error
mod engine_runs; // end-to-end runs: exit codes, audit faults, open model under a stall, embedded child
mod report_merge; // merging run directories: read back exactly, shards add up, thresholds re-judged
