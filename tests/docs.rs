//! The documentation a person finds their way in: `README.md` (what it is, why, the quickstart,
//! the resource in brief, where to read on) and one page per question in `docs/`.
//!
//! Offline, no network: these tests fail
//! - on a broken relative link or `#anchor` in `README.md` or `docs/**/*.md` (a file or directory
//!   that does not exist, a path that leaves the repository, an anchor that no heading of the
//!   target file gives, with GitHub's slug rules); external `http(s)` links are not checked;
//! - on a flag of `eac-controller run --help` (taken from the real parser, `cli::Cli`) that no
//!   page and not the README mentions, and on its environment variable likewise;
//! - on a README longer than [`README_MAX_LINES`], and on a `docs/` page the README does not link.
//!
//! The checks are plain functions over text, and the tests at the end feed them broken input, so
//! each is known to fail when it should.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use clap::CommandFactory;
use eac_controller::cli::Cli;

/// The README stays a first screen plus a little: at most about 250 lines, with some slack.
const README_MAX_LINES: usize = 260;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every `.md` file under `docs/`, sorted.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("docs"), &mut files);
    files.sort();
    files.insert(0, root.join("README.md"));
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Markdown, as far as links and headings need it.

/// The text outside fenced code blocks, with every other line (fences and their content)
/// replaced by an empty one, so line numbers stay those of the file.
fn prose(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    // The open fence: its character and length.
    let mut fence: Option<(char, usize)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |c| trimmed.chars().take_while(|x| *x == c).count());
        match fence {
            None if indent <= 3 && run >= 3 => {
                fence = marker.map(|c| (c, run));
            }
            Some((c, n)) => {
                if indent <= 3 && marker == Some(c) && run >= n && trimmed[run..].trim().is_empty()
                {
                    fence = None;
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Inline code spans blanked out (same length, newlines kept), so that what they show is never
/// taken for a link.
fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let open = chars[i..].iter().take_while(|c| **c == '`').count();
        // Find a closing run of exactly the same length.
        let mut j = i + open;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let run = chars[j..].iter().take_while(|c| **c == '`').count();
                if run == open {
                    close = Some(j);
                    break;
                }
                j += run;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in out.iter_mut().take(j + open).skip(i) {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = j + open;
            }
            None => i += open,
        }
    }
    out.into_iter().collect()
}

/// The text a heading renders as: code spans keep their content, links their text, images their
/// alt text; emphasis markers and HTML tags go.
fn heading_text(raw: &str) -> String {
    let mut text = String::new();
    let chars: Vec<char> = raw.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '`' => i += 1,
            '*' => i += 1,
            '!' if chars.get(i + 1) == Some(&'[') => i += 1,
            '[' => i += 1,
            ']' if chars.get(i + 1) == Some(&'(') => {
                // Skip the link's target.
                let mut depth = 0;
                i += 1;
                while i < chars.len() {
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            ']' => i += 1,
            '<' => {
                // An HTML tag: drop it.
                match chars[i..].iter().position(|c| *c == '>') {
                    Some(end) => i += end + 1,
                    None => {
                        text.push('<');
                        i += 1;
                    }
                }
            }
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    text
}

/// GitHub's anchor for a heading: lowercase; letters, digits, marks, '_', '-' and spaces kept,
/// every other character dropped; each space becomes '-'.
fn slug(heading: &str) -> String {
    heading_text(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file offers: its headings' slugs (a repeated slug gets `-1`, `-2`, ...
/// as on GitHub) and explicit `<a name="..">` / `id=".."` anchors.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let text = prose(markdown);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut add = |base: String, out: &mut BTreeSet<String>| {
        let count = seen.entry(base.clone()).or_insert(0);
        let n = *count;
        *count += 1;
        out.insert(if n == 0 { base } else { format!("{base}-{n}") });
    };
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if indent <= 3
            && (1..=6).contains(&hashes)
            && trimmed[hashes..]
                .chars()
                .next()
                .is_none_or(char::is_whitespace)
        {
            // ATX heading; a closing run of '#' is not part of it.
            let body = trimmed[hashes..].trim();
            let body = body.trim_end_matches('#').trim_end();
            add(slug(body), &mut out);
            continue;
        }
        // Setext heading: a line of '=' or '-' under a paragraph line.
        let underline = line.trim();
        if i > 0
            && !underline.is_empty()
            && (underline.chars().all(|c| c == '=') || underline.chars().all(|c| c == '-'))
        {
            let above = lines[i - 1].trim();
            if !above.is_empty() && !above.starts_with('|') && !above.starts_with('#') {
                add(slug(above), &mut out);
            }
        }
        for key in ["name=\"", "id=\""] {
            let mut rest = *line;
            while let Some(at) = rest.find(key) {
                rest = &rest[at + key.len()..];
                if let Some(end) = rest.find('"') {
                    out.insert(rest[..end].to_string());
                }
            }
        }
    }
    out
}

/// A link found in a file: its line and its target as written.
#[derive(Debug)]
struct Link {
    line: usize,
    target: String,
}

/// The targets of inline links and images (`[text](target "title")`), of reference definitions
/// (`[label]: target`) and of HTML `href`/`src` attributes, outside code.
fn links(markdown: &str) -> Vec<Link> {
    let text = without_code_spans(&prose(markdown));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        // Inline links: the target follows "](" on the same line.
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let (target, len) = inline_target(after);
            out.push(Link {
                line: line_no,
                target,
            });
            rest = &after[len..];
        }
        // Reference definitions: "[label]: target".
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() <= 3
            && trimmed.starts_with('[')
            && let Some(close) = trimmed.find("]:")
        {
            let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
            out.push(Link {
                line: line_no,
                target: target.trim_matches(['<', '>']).to_string(),
            });
        }
        for key in ["href=\"", "src=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(key) {
                rest = &rest[at + key.len()..];
                if let Some(end) = rest.find('"') {
                    out.push(Link {
                        line: line_no,
                        target: rest[..end].to_string(),
                    });
                }
            }
        }
    }
    out
}

/// The target at the start of `s` (what follows "]("), and how many bytes the link's
/// parenthesised part takes.
fn inline_target(s: &str) -> (String, usize) {
    let s_trim = s.trim_start();
    let lead = s.len() - s_trim.len();
    if let Some(inner) = s_trim.strip_prefix('<') {
        let end = inner.find('>').unwrap_or(inner.len());
        return (inner[..end].to_string(), lead + 1 + end);
    }
    // Up to whitespace (a title follows) or the ')' that balances the opening one.
    let mut depth = 0usize;
    for (i, c) in s_trim.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return (s_trim[..i].to_string(), lead + i),
            ')' => depth -= 1,
            c if c.is_whitespace() => return (s_trim[..i].to_string(), lead + i),
            _ => {}
        }
    }
    (s_trim.to_string(), s.len())
}

/// `%20` and friends, as a browser would decode them.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `base` joined with `relative`, `.` and `..` resolved without touching the file system.
fn resolve(base: &Path, relative: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(relative).components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether a target is for the web, not the repository: it has a scheme (`https:`, `mailto:`)
/// or is protocol-relative.
fn is_external(target: &str) -> bool {
    if target.starts_with("//") {
        return true;
    }
    match target.find(':') {
        Some(colon) => {
            let scheme = &target[..colon];
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        }
        None => false,
    }
}

/// Every broken relative link or anchor in `files`, as "file:line: target: why". `root` is the
/// repository: a link may not leave it, and a link starting with '/' starts from it.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut anchors_of = |path: &Path| -> BTreeSet<String> {
        anchor_cache
            .entry(path.to_path_buf())
            .or_insert_with(|| anchors(&read(path)))
            .clone()
    };
    let mut problems = Vec::new();
    for file in files {
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let dir = file.parent().expect("a file has a directory");
        for link in links(&read(file)) {
            let at = format!("{shown}:{}: ({})", link.line, link.target);
            let target = link.target.trim();
            if target.is_empty() {
                problems.push(format!("{at}: an empty link"));
                continue;
            }
            if is_external(target) {
                continue;
            }
            let (path_part, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(percent_decode(a))),
                None => (target, None),
            };
            let path_part = path_part.split('?').next().unwrap_or("");
            let path = if path_part.is_empty() {
                file.clone()
            } else if let Some(from_root) = path_part.strip_prefix('/') {
                resolve(root, &percent_decode(from_root))
            } else {
                resolve(dir, &percent_decode(path_part))
            };
            if !path.starts_with(root) {
                problems.push(format!("{at}: leaves the repository"));
                continue;
            }
            if !path.exists() {
                let shown_path = path.strip_prefix(root).unwrap_or(&path).display();
                problems.push(format!("{at}: {shown_path} does not exist"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if path.is_dir() {
                problems.push(format!("{at}: an anchor into a directory"));
            } else if path.extension().is_some_and(|e| e == "md") {
                let offered = anchors_of(&path);
                if !offered.contains(&anchor) {
                    let shown_path = path.strip_prefix(root).unwrap_or(&path).display();
                    problems.push(format!(
                        "{at}: no heading of {shown_path} has the anchor #{anchor} (it has: {})",
                        offered.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
            } else if !is_line_anchor(&anchor) {
                problems.push(format!(
                    "{at}: #{anchor} is not a line anchor (#L12, #L12-L20)"
                ));
            }
        }
    }
    problems
}

/// GitHub's anchors into a source file: `L12` or `L12-L20`.
fn is_line_anchor(anchor: &str) -> bool {
    let line = |s: &str| {
        s.strip_prefix('L')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    match anchor.split_once('-') {
        Some((a, b)) => line(a) && line(b),
        None => line(anchor),
    }
}

// ---------------------------------------------------------------------------------------------
// Flags.

/// A flag (`--name`) or environment variable of `eac-controller run`.
#[derive(Debug)]
struct Setting {
    flag: String,
    env: Option<String>,
}

/// Every flag `eac-controller run --help` shows, from the parser the binary uses.
fn run_settings() -> Vec<Setting> {
    let cli = Cli::command();
    let run = cli
        .find_subcommand("run")
        .expect("eac-controller has a `run` subcommand");
    run.get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| {
            let long = arg.get_long()?;
            (long != "help" && long != "version").then(|| Setting {
                flag: format!("--{long}"),
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            })
        })
        .collect()
}

/// Whether `word` appears in `text` as a whole word: not followed by a character that would
/// make it another flag or variable (`--lease` is not mentioned by `--lease-name`).
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let after_ok = text[at + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
        before_ok && after_ok
    })
}

/// Every flag (and its environment variable) of `settings` that no text of `docs` mentions.
fn undocumented(settings: &[Setting], docs: &[String]) -> Vec<String> {
    let mentioned = |word: &str| docs.iter().any(|text| mentions(text, word));
    let mut missing = Vec::new();
    for setting in settings {
        if !mentioned(&setting.flag) {
            missing.push(setting.flag.clone());
        }
        if let Some(env) = &setting.env
            && !mentioned(env)
        {
            missing.push(format!(
                "{} (the environment variable of {})",
                env, setting.flag
            ));
        }
    }
    missing
}

// ---------------------------------------------------------------------------------------------
// The tests of the repository's documentation.

#[test]
fn no_relative_link_or_anchor_is_broken() {
    let root = root();
    let files = documentation_files(&root);
    assert!(
        files.len() > 1,
        "docs/ has no page: {files:?} (one page per question a user comes with)"
    );
    let problems = broken_links(&root, &files);
    assert!(
        problems.is_empty(),
        "broken links in README.md / docs/ (fix the path, or the anchor: GitHub's slug of the \
         heading, lowercase, spaces to '-', punctuation other than '-' and '_' dropped):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_flag_of_run_is_documented() {
    let root = root();
    let settings = run_settings();
    assert!(
        settings.len() >= 20,
        "the parser's `run` has only {} flags: {settings:?}",
        settings.len()
    );
    let docs: Vec<String> = documentation_files(&root)
        .iter()
        .map(PathBuf::as_path)
        .map(read)
        .collect();
    let missing = undocumented(&settings, &docs);
    assert!(
        missing.is_empty(),
        "`eac-controller run --help` has flags no page of docs/ (nor README.md) mentions; add \
         them to the table in docs/configuration.md:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_readme_stays_short() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: it is the first screen (what \
         it is, why, the quickstart, the resource in brief, where to read on); move the rest to \
         a page of docs/"
    );
}

#[test]
fn the_readme_links_every_page() {
    let root = root();
    let readme = root.join("README.md");
    let linked: BTreeSet<PathBuf> = links(&read(&readme))
        .into_iter()
        .filter(|l| !is_external(&l.target))
        .map(|l| resolve(&root, l.target.split('#').next().unwrap_or("")))
        .collect();
    let unlinked: Vec<String> = documentation_files(&root)
        .into_iter()
        .skip(1)
        .filter(|page| !linked.contains(page))
        .map(|page| {
            page.strip_prefix(&root)
                .unwrap_or(&page)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        unlinked.is_empty(),
        "README.md's \"Where to read on\" does not link these pages: {unlinked:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The checks themselves fail when they should.

#[test]
fn slugs_follow_github() {
    for (heading, want) in [
        (
            "The management-account side: ConnectionAcceptancePolicy",
            "the-management-account-side-connectionacceptancepolicy",
        ),
        (
            "Demo mode: `--proton-endpoint embedded`",
            "demo-mode---proton-endpoint-embedded",
        ),
        (
            "Errors, retries and the AWS call budget",
            "errors-retries-and-the-aws-call-budget",
        ),
        (
            "IRSA (IAM roles for service accounts)",
            "irsa-iam-roles-for-service-accounts",
        ),
        (
            "Flags of `eac-controller run`",
            "flags-of-eac-controller-run",
        ),
        ("snake_case and **bold**", "snake_case-and-bold"),
        ("A [linked](https://example.com) word", "a-linked-word"),
    ] {
        assert_eq!(slug(heading), want, "{heading}");
    }
    let offered = anchors("# Title\n## Same\n```sh\n# not a heading\n```\n## Same\nText\n---\n");
    let want: BTreeSet<String> = ["title", "same", "same-1", "text"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(offered, want);
}

#[test]
fn broken_links_and_anchors_are_found() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().canonicalize().expect("the temporary directory");
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::create_dir_all(root.join("charts")).unwrap();
    fs::write(root.join("charts/values.yaml"), "a: 1\n").unwrap();
    fs::write(
        root.join("README.md"),
        "# Project\n\n## Where to read on\n\n[page](docs/page.md#a-section), \
         [dir](charts/), [top](#project), [web](https://example.com/missing.md#nothing)\n\
         `[in code](docs/missing.md)`\n\n```md\n[in a fence](docs/missing.md)\n```\n",
    )
    .unwrap();
    fs::write(
        root.join("docs/page.md"),
        "# Page\n\n## A section\n\n[back](../README.md#where-to-read-on), \
         [values](../charts/values.yaml#L1), [self](#page), [ref]\n\n[ref]: ../charts/values.yaml\n",
    )
    .unwrap();
    let files = documentation_files(&root);
    assert_eq!(files.len(), 2);
    assert_eq!(broken_links(&root, &files), Vec::<String>::new());

    let broken = [
        ("[gone](missing.md)", "docs/missing.md does not exist"),
        ("[anchor](../README.md#nowhere)", "has the anchor #nowhere"),
        ("[self](#a-sectio)", "has the anchor #a-sectio"),
        (
            "[no ../](charts/values.yaml)",
            "docs/charts/values.yaml does not exist",
        ),
        ("[out](../../elsewhere.md)", "leaves the repository"),
        (
            "[not a line](../charts/values.yaml#a)",
            "is not a line anchor",
        ),
        ("[empty]()", "an empty link"),
        ("[ref]: ./nothing.md", "docs/nothing.md does not exist"),
    ];
    for (link, why) in broken {
        let page = read(&root.join("docs/page.md"));
        fs::write(root.join("docs/page.md"), format!("{page}\n{link}\n")).unwrap();
        let problems = broken_links(&root, &files);
        assert_eq!(problems.len(), 1, "{link}: {problems:?}");
        assert!(problems[0].contains(why), "{link}: {problems:?}");
        fs::write(root.join("docs/page.md"), page).unwrap();
    }
}

#[test]
fn an_undocumented_flag_is_found() {
    let settings = [
        Setting {
            flag: "--lease".into(),
            env: Some("EAC_LEASE".into()),
        },
        Setting {
            flag: "--region".into(),
            env: Some("EAC_REGION".into()),
        },
    ];
    let docs = [
        "| `--lease-name` | `EAC_LEASE_NAME` |".to_string(),
        "`--region` (`EAC_REGION`)".to_string(),
    ];
    assert_eq!(
        undocumented(&settings, &docs),
        ["--lease", "EAC_LEASE (the environment variable of --lease)"]
    );
    assert!(mentions("run --lease, then", "--lease"));
    assert!(!mentions("XEAC_REGION", "EAC_REGION"));
    // The real parser's flags include the ones the README has always documented.
    let flags: Vec<String> = run_settings().into_iter().map(|s| s.flag).collect();
    for flag in ["--proton-endpoint", "--concurrency", "--leader-election"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} in {flags:?}");
    }
}
