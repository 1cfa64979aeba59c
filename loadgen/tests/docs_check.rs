//! The docs stay honest: every relative link in README.md and docs/*.md
//! resolves (the file, and the `#anchor` among its headings as GitHub makes
//! them), and every `loadgen ...` and `cargo ...` command they quote parses:
//! loadgen's subcommands and flags exist in its clap definition (quoted in a
//! code block, the whole command line parses), the scenario files they name
//! exist, and cargo's packages, binaries, benches and tests exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The text outside fenced code blocks (fences blanked), and the fenced lines
/// (continuation backslashes joined).
fn split(text: &str) -> (String, Vec<String>) {
    let mut prose = String::new();
    let mut code = Vec::new();
    let mut fence: Option<&str> = None;
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| t.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (Some(_), _) => {
                pending.push_str(line.trim_end_matches('\\'));
                pending.push(' ');
                if !line.ends_with('\\') {
                    code.push(std::mem::take(&mut pending));
                }
            }
            (None, None) => prose.push_str(line),
        }
        prose.push('\n');
    }
    (prose, code)
}

/// Inline code spans of the prose (they may cross a line break), and the
/// prose with them removed.
fn inline_spans(prose: &str) -> (Vec<String>, String) {
    let mut spans = Vec::new();
    let mut rest = String::new();
    let mut parts = prose.split('`');
    if let Some(first) = parts.next() {
        rest.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        if inside {
            spans.push(part.replace('\n', " "));
        } else {
            rest.push_str(part);
        }
        inside = !inside;
    }
    (spans, rest)
}

/// GitHub's heading anchors of a Markdown file: lower case, letters, digits,
/// `-` and `_` kept, spaces to `-`, repeats suffixed `-1`, `-2`.
fn anchors(text: &str) -> BTreeSet<String> {
    let (prose, _) = split(text);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose.lines() {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Problems with the relative links of `file`.
fn check_links(file: &Path, text: &str) -> Vec<String> {
    let (prose, _) = split(text);
    let (_, prose) = inline_spans(&prose);
    let mut problems = Vec::new();
    for piece in prose.split("](").skip(1) {
        let Some(target) = piece.split(')').next() else {
            continue;
        };
        let target = target.split_whitespace().next().unwrap_or("");
        if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target, None),
        };
        if path.is_empty() {
            let anchor = anchor.unwrap_or("");
            if !anchors(text).contains(anchor) {
                problems.push(format!(
                    "{}: link to {target}: no heading makes #{anchor}",
                    file.display()
                ));
            }
            continue;
        }
        let resolved = file.parent().unwrap().join(path);
        if !resolved.exists() {
            problems.push(format!(
                "{}: link to {target}: no such file",
                file.display()
            ));
            continue;
        }
        if let Some(anchor) = anchor {
            if resolved.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&resolved).unwrap();
                if !anchors(&text).contains(anchor) {
                    problems.push(format!(
                        "{}: link to {target}: no heading makes #{anchor}",
                        file.display()
                    ));
                }
            }
        }
    }
    problems
}

/// Markdown files a run writes, which the docs name but the repository lacks.
const WRITTEN: &[&str] = &["report.md"];

/// Problems with the Markdown files `file` names in its prose without a link
/// (`see design.md`): each must exist beside it or from the repository root.
fn check_citations(file: &Path, text: &str) -> Vec<String> {
    let (prose, _) = split(text);
    let mut problems = Vec::new();
    for word in prose.split(|c: char| c.is_whitespace() || "()[]`,;\"'".contains(c)) {
        let word = word.trim_end_matches(['.', ':']);
        let name = word.split('#').next().unwrap_or(word);
        if !name.ends_with(".md") || word.contains("://") || WRITTEN.contains(&name) {
            continue;
        }
        let beside = file.parent().unwrap().join(name);
        if !beside.exists() && !repo().join(name).exists() {
            problems.push(format!(
                "{}: cites {name}, which is not in the repository",
                file.display()
            ));
        }
    }
    problems
}

/// Shell-like words of a command line, up to a comment, pipe or redirection.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    let end = out
        .iter()
        .position(|w| {
            w.starts_with('#') || ["|", ">", ">>", "2>", "&&", ";", "&"].contains(&w.as_str())
        })
        .unwrap_or(out.len());
    out.truncate(end);
    out
}

/// Synopsis notation to plain arguments: `[--target URL]` -> `--target URL`,
/// `DIR...` -> `DIR`, a bare `...` dropped, `dir/{a,b}` -> `dir/a dir/b`.
fn plain(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| a.replace(['[', ']'], ""))
        .map(|a| a.trim_end_matches("...").to_string())
        .filter(|a| !a.is_empty())
        .flat_map(|a| match (a.find('{'), a.find('}')) {
            (Some(i), Some(j)) if i < j => a[i + 1..j]
                .split(',')
                .map(|alt| format!("{}{alt}{}", &a[..i], &a[j + 1..]))
                .collect(),
            _ => vec![a],
        })
        .collect()
}

/// A placeholder (`N`, `URL`, `I/N`: capitals, digits, `_`, `/`) stands for a
/// valid value when a whole command line is parsed: a lone one reads `1`, a
/// fraction `I/N` reads `0/1` (the first of one); of alternatives (`N|auto`)
/// the first is taken.
fn placeholder_value(a: &str) -> String {
    let a = a.split('|').next().unwrap_or(a);
    let caps = |p: &str| {
        p.starts_with(|c: char| c.is_ascii_uppercase())
            && p.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    if !a.is_empty() && a.split('/').all(caps) {
        let parts = a.split('/').count();
        if parts == 1 {
            "1".into()
        } else {
            std::iter::once("0")
                .chain(std::iter::repeat_n("1", parts - 1))
                .collect::<Vec<_>>()
                .join("/")
        }
    } else {
        a.to_string()
    }
}

/// Every flag of `cmd`'s arguments, `--long` and `-s`.
fn flags(cmd: &clap::Command) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["--help", "-h"].map(String::from).into();
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            out.insert(format!("--{l}"));
        }
        if let Some(s) = a.get_short() {
            out.insert(format!("-{s}"));
        }
    }
    out
}

/// Problems with `loadgen ARGS`; `whole`: a code-block line, parsed in full.
fn check_loadgen(where_: &str, args: &[String], whole: bool) -> Vec<String> {
    let args = plain(args);
    let mut problems = Vec::new();
    let Some(sub) = args.first() else {
        return problems;
    };
    let root = loadgen::cli::Opts::command();
    let Some(cmd) = root.find_subcommand(sub) else {
        return vec![format!("{where_}: `loadgen {sub}`: no such subcommand")];
    };
    let known: BTreeSet<String> = flags(cmd).union(&flags(&root)).cloned().collect();
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap_or(a);
        if flag.starts_with('-') && flag.len() > 1 && !known.contains(flag) {
            problems.push(format!("{where_}: `loadgen {sub}` has no flag {flag}"));
        }
        if sub == "run"
            && a.starts_with("scenarios/")
            && a.ends_with(".toml")
            && !repo().join(a).is_file()
        {
            problems.push(format!("{where_}: scenario file {a} does not exist"));
        }
    }
    if whole && problems.is_empty() {
        let line =
            std::iter::once("loadgen".to_string()).chain(args.iter().map(|a| placeholder_value(a)));
        if let Err(e) = loadgen::cli::Opts::try_parse_from(line) {
            problems.push(format!(
                "{where_}: `loadgen {}` does not parse: {}",
                args.join(" "),
                e.to_string().lines().next().unwrap_or("")
            ));
        }
    }
    problems
}

/// The workspace's packages: name -> directory.
fn packages() -> BTreeMap<String, PathBuf> {
    let root: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    root["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let dir = repo().join(m.as_str().unwrap());
            let manifest: toml::Value =
                toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
            (
                manifest["package"]["name"].as_str().unwrap().to_string(),
                dir,
            )
        })
        .collect()
}

/// True when package `dir` declares a target of `kind` (`bin`, `bench`, `test`) named `name`.
fn has_target(dir: &Path, kind: &str, name: &str) -> bool {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
    let declared = manifest
        .get(kind)
        .and_then(|t| t.as_array())
        .is_some_and(|list| {
            list.iter()
                .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
        });
    let file = match kind {
        "bin" => dir.join(format!("src/bin/{name}.rs")),
        "bench" => dir.join(format!("benches/{name}.rs")),
        _ => dir.join(format!("tests/{name}.rs")),
    };
    declared || file.is_file()
}

/// Problems with `cargo ARGS`.
fn check_cargo(where_: &str, args: &[String], whole: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let (cargo_args, after) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let packages = packages();
    let mut package = None;
    let mut it = cargo_args.iter();
    while let Some(a) = it.next() {
        let kind = match a.as_str() {
            "-p" | "--package" => {
                let name = it.next().cloned().unwrap_or_default();
                if !packages.contains_key(&name) {
                    problems.push(format!(
                        "{where_}: cargo: no package {name} in the workspace"
                    ));
                }
                package = Some(name);
                continue;
            }
            "--bin" => "bin",
            "--bench" => "bench",
            "--test" => "test",
            _ => continue,
        };
        let name = it.next().cloned().unwrap_or_default();
        let dirs: Vec<&PathBuf> = match package.as_ref().and_then(|p| packages.get(p)) {
            Some(d) => vec![d],
            None => packages.values().collect(),
        };
        if !dirs.iter().any(|d| has_target(d, kind, &name)) {
            problems.push(format!("{where_}: cargo: no {kind} target {name}"));
        }
    }
    if cargo_args.first().map(String::as_str) == Some("run") {
        match package.as_deref() {
            Some("loadgen") => problems.extend(check_loadgen(where_, after, whole)),
            Some("reference-server") if whole => {
                let line =
                    std::iter::once("reference-server".to_string()).chain(after.iter().cloned());
                if let Err(e) = reference_server::config::Opts::try_parse_from(line) {
                    problems.push(format!(
                        "{where_}: reference-server {}: {}",
                        after.join(" "),
                        e.to_string().lines().next().unwrap_or("")
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// Problems with the commands `text` quotes (`where_` names it).
fn check_command(where_: &str, text: &str, whole: bool) -> Vec<String> {
    let w = words(text);
    if let Some(i) = w.iter().position(|t| t == "cargo") {
        return check_cargo(where_, &w[i + 1..], whole);
    }
    match w
        .iter()
        .position(|t| t == "loadgen" || t.ends_with("/loadgen"))
    {
        Some(i) if i + 1 < w.len() => check_loadgen(where_, &w[i + 1..], whole),
        _ => Vec::new(),
    }
}

fn check_commands(file: &Path, text: &str) -> Vec<String> {
    let (prose, code) = split(text);
    let (spans, _) = inline_spans(&prose);
    let name = file.display().to_string();
    let mut problems = Vec::new();
    for line in &code {
        problems.extend(check_command(&name, line, true));
    }
    for span in &spans {
        problems.extend(check_command(&name, span, false));
    }
    problems
}

fn docs() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    in_docs.sort();
    files.extend(in_docs);
    files
}

#[test]
fn every_relative_link_and_quoted_command_in_the_docs_holds() {
    let mut problems = Vec::new();
    let mut commands = 0;
    for file in docs() {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(repo()).unwrap().to_path_buf();
        problems.extend(
            check_links(&file, &text)
                .into_iter()
                .map(|p| p.replace(&file.display().to_string(), &rel.display().to_string())),
        );
        problems.extend(
            check_citations(&file, &text)
                .into_iter()
                .map(|p| p.replace(&file.display().to_string(), &rel.display().to_string())),
        );
        problems.extend(check_commands(&rel, &text));
        commands += text.matches("loadgen ").count();
    }
    assert!(
        commands > 20,
        "the scan found the quoted commands ({commands})"
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself finds what it is for.
#[test]
fn the_checker_finds_broken_links_and_commands() {
    let doc = repo().join("docs/example.md");
    let text = "# Title\n\n## The exit status\n\nSee [ok](reports.md), [gone](nope.md), [anchor](#the-exit-status), \
                [bad anchor](reports.md#no-such-heading).\n\n```\nloadgen run scenarios/smoke.toml --taget http://x\n\
                loadgen run scenarios/nope.toml\ncargo run -p nopkg -- x\ncargo bench -p chatscale-benches --bench nobench\n\
                ./target/release/loadgen compare a.json\n```\n\nInline `loadgen frobnicate` and `loadgen merge DIR... --out X`.\n";
    let cited = check_citations(
        &doc,
        "As design.md says, and docs/scenarios.md, `reports.md`.\n",
    );
    assert_eq!(cited.len(), 1, "{cited:?}");
    assert!(cited[0].contains("design.md"));
    let links = check_links(&doc, text);
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(links[0].contains("nope.md") && links[1].contains("#no-such-heading"));
    let commands = check_commands(Path::new("docs/example.md"), text);
    for expected in [
        "no flag --taget",
        "scenarios/nope.toml does not exist",
        "no package nopkg",
        "no bench target nobench",
        "does not parse",
        "no such subcommand",
    ] {
        assert!(
            commands.iter().any(|p| p.contains(expected)),
            "{expected}: {commands:?}"
        );
    }
    assert_eq!(commands.len(), 6, "{commands:?}");
    assert!(
        anchors("## Metrics (`GET /metrics`, Prometheus text format)\n")
            .contains("metrics-get-metrics-prometheus-text-format")
    );
}
