//! The front door works as written:
//!
//! - the README's set-up command, five-minute tour and bridge walk-through
//!   run against the real binary (and the toy backend), and every output the
//!   README shows is what they print;
//! - every relative link and anchor in the project's markdown resolves;
//! - the README stays short and links every page of docs/; no sentence is
//!   in two pages; docs/layout.md names every directory; the README's chart
//!   shows the figures measured in docs/operations.md, and the bridge
//!   configuration it shows is the toy backend's file.
//!
//! The tour's blocks are marked in the README with an HTML comment on the
//! line before the fence:
//!
//! - `<!-- tour: gateway -->` — a gateway command (`cargo run --release --
//!   ARGS`, run here as the test's binary with ARGS); the `# ` line under it
//!   is its ready line. A gateway already running is stopped first with
//!   SIGINT (the README's Ctrl-C) and must exit 0;
//! - `<!-- tour: background NAME -->` — one long-running command, started
//!   and left running; `# ` lines under it are lines it prints (waited
//!   for). A command that talks to the gateway's public listener is waited
//!   for until the gateway counts one more subscriber;
//! - `<!-- tour: run -->` — commands run one by one; the `# ` lines after a
//!   command are its whole expected stdout, `…` standing for any text;
//! - `<!-- tour: output NAME -->` — lines that the background command NAME
//!   prints, in this order (`…` as above).
//!
//! Every address is the real one of a process the test started: gateways
//! listen on port 0 (through `POLLBRIDGE_LISTEN` and
//! `POLLBRIDGE_ADMIN_LISTEN`, which the commands don't override), the toy
//! backend on a free port, so the test can run beside anything. The
//! README's 127.0.0.1:8080, 127.0.0.1:9090 and 127.0.0.1:3000 are replaced
//! by the real addresses in commands, in the configuration files they name
//! and in outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const PUBLIC: &str = "127.0.0.1:8080";
const ADMIN: &str = "127.0.0.1:9090";
const BACKEND: &str = "127.0.0.1:3000";
const README_MAX_LINES: usize = 250;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the tour ------------------------------------------------------------

/// One marked block of the README.
#[derive(Debug)]
struct Block {
    /// The marker's words: `["run"]`, `["background", "sse"]`, …
    marker: Vec<String>,
    /// The fenced lines.
    lines: Vec<String>,
    line: usize,
}

fn marked_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- tour:")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.get(i + 1).copied().unwrap_or("");
        assert!(
            fence.starts_with("```"),
            "README.md:{}: a tour marker must be followed by a fenced block",
            i + 1
        );
        let body: Vec<String> = lines[i + 2..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .map(|l| l.to_string())
            .collect();
        blocks.push(Block {
            marker: marker.split_whitespace().map(String::from).collect(),
            lines: body,
            line: i + 1,
        });
    }
    blocks
}

/// Commands and the stdout each is shown to print (`# ` lines under it).
fn commands_with_output(lines: &[String]) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in lines {
        if let Some(shown) = line.strip_prefix("# ") {
            let (_, expected) = out.last_mut().expect("an output line follows a command");
            match expected {
                Some(text) => {
                    text.push('\n');
                    text.push_str(shown);
                }
                None => *expected = Some(shown.to_string()),
            }
        } else if !line.trim().is_empty() {
            out.push((line.clone(), None));
        }
    }
    out
}

/// `text` matches `pattern`, where `…` in the pattern stands for any text.
fn matches_shown(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return text == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The README's addresses and the real ones of this run.
struct Addresses {
    /// (as the README shows it, as it really is)
    pairs: Vec<(String, String)>,
}

impl Addresses {
    fn new(backend_port: u16) -> Self {
        Addresses {
            pairs: vec![
                (BACKEND.into(), format!("127.0.0.1:{backend_port}")),
                // The toy backend takes its port as an argument.
                (
                    "backend.py 3000".into(),
                    format!("backend.py {backend_port}"),
                ),
            ],
        }
    }
    /// A gateway started: its listeners replace the previous one's.
    fn set_gateway(&mut self, public: String, admin: String) {
        self.pairs
            .retain(|(shown, _)| shown != PUBLIC && shown != ADMIN);
        self.pairs.push((PUBLIC.into(), public));
        self.pairs.push((ADMIN.into(), admin));
    }
    fn real(&self, shown: &str) -> &str {
        let pair = self.pairs.iter().find(|(s, _)| s == shown);
        &pair.expect("a gateway is running").1
    }
    fn to_real(&self, text: &str) -> String {
        self.pairs
            .iter()
            .fold(text.to_string(), |t, (shown, real)| t.replace(shown, real))
    }
    fn to_shown(&self, text: &str) -> String {
        self.pairs
            .iter()
            .fold(text.to_string(), |t, (shown, real)| t.replace(real, shown))
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child killed when dropped, with everything it started (it leads its
/// own process group), so a failing assertion leaks no process.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the child's own group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c COMMAND` in the repository, leading a new process group.
fn shell(command: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(repo())
        .process_group(0);
    cmd
}

/// Runs a command to completion within `limit`; its stdout.
fn run_bounded(command: &str, limit: Duration) -> String {
    let mut child = Running(
        shell(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}")),
    );
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait for a tour command") {
            let mut stdout = String::new();
            let mut stderr = String::new();
            child
                .0
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(status.success(), "{command:?} failed ({status}): {stderr}");
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command left running, its stdout collected as it comes.
struct Background {
    _child: Running,
    output: Arc<Mutex<String>>,
}

fn start_background(command: &str) -> Background {
    let mut child = shell(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Background {
        _child: Running(child),
        output,
    }
}

/// `GET http://{addr}{path}` over a plain socket: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// All subscribers of all channels, as the admin listener counts them.
fn subscriber_count(admin: &str) -> u64 {
    let (status, body) = http_get(admin, "/channels");
    assert_eq!(status, 200, "GET /channels: {body}");
    // The body may be chunked; the JSON is the part between the braces.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let doc: serde_json::Value = serde_json::from_str(json).expect("/channels is JSON");
    doc["channels"]
        .as_array()
        .expect("a channel list")
        .iter()
        .flat_map(|c| c["subscribers"].as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// `lines` appear in `text` in this order (other lines may come between).
fn contains_in_order(text: &str, lines: &[String]) -> bool {
    let mut wanted = lines.iter().peekable();
    for line in text.lines() {
        if wanted.peek().is_some_and(|w| matches_shown(line, w)) {
            wanted.next();
        }
    }
    wanted.peek().is_none()
}

/// Starts a gateway command as the test's binary, with the configuration
/// file it names (if any) copied with the real addresses; records its
/// listeners in `addrs`.
fn start_gateway(block: &Block, addrs: &mut Addresses, scratch: &Path) -> Running {
    let commands = commands_with_output(&block.lines);
    assert_eq!(
        commands.len(),
        1,
        "README.md:{}: one gateway command",
        block.line
    );
    let (command, shown) = &commands[0];
    let args = command
        .strip_prefix("cargo run --release --")
        .unwrap_or_else(|| panic!("a gateway command is `cargo run --release -- …`: {command:?}"));
    let mut args = args.to_string();
    if let Some(file) = args
        .split_whitespace()
        .skip_while(|a| *a != "--config")
        .nth(1)
    {
        let copy = scratch.join(format!("config-{}.toml", block.line));
        std::fs::write(&copy, addrs.to_real(&read(&repo().join(file)))).unwrap();
        args = args.replace(file, &copy.display().to_string());
    }
    let mut child = Running(
        shell(&format!("exec {} {args}", env!("CARGO_BIN_EXE_pollbridge")))
            .env("POLLBRIDGE_LISTEN", "127.0.0.1:0")
            .env("POLLBRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway printed its ready line within 30 s");
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {ready:?}"))
            .to_string()
    };
    addrs.set_gateway(field("public="), field("admin="));
    let shown = shown.as_deref().expect("the README shows the ready line");
    assert_eq!(addrs.to_shown(ready.trim_end()), shown, "the ready line");
    child
}

/// Ctrl-C: the gateway drains and exits 0.
fn stop_gateway(mut gateway: Running) {
    let status = Command::new("kill")
        .args(["-INT", &gateway.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = gateway.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "the gateway exited with {exit}");
}

/// Waits (bounded) until `output` shows `lines` in order.
fn wait_for_lines(
    at: &str,
    name: &str,
    output: &Mutex<String>,
    lines: &[String],
    addrs: &Addresses,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !contains_in_order(&addrs.to_shown(&output.lock().unwrap()), lines) {
        assert!(
            Instant::now() < deadline,
            "{at}: {name} printed\n{}\nbut the README shows\n{}",
            output.lock().unwrap(),
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let readme = read(&repo().join("README.md"));
    let blocks = marked_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "the README marks its tour ({} blocks)",
        blocks.len()
    );
    assert_eq!(
        blocks[0].marker,
        ["gateway"],
        "the first marked block is the set-up"
    );
    let scratch = std::env::temp_dir().join(format!("pollbridge-readme-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut addrs = Addresses::new(free_port());
    let mut gateway: Option<Running> = None;
    let mut background: BTreeMap<String, Background> = BTreeMap::new();

    for (i, block) in blocks.iter().enumerate() {
        let at = format!("README.md:{}", block.line);
        match block.marker.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["gateway"] => {
                if let Some(previous) = gateway.take() {
                    stop_gateway(previous);
                }
                gateway = Some(start_gateway(block, &mut addrs, &scratch));
                if i == 0 {
                    check_set_up(&readme, addrs.real(PUBLIC));
                }
            }
            ["background", name] => {
                let commands = commands_with_output(&block.lines);
                let [(command, shown)] = &commands[..] else {
                    panic!("{at}: one command in a background block");
                };
                let waits_for_subscriber = command.contains(PUBLIC);
                let before = waits_for_subscriber.then(|| subscriber_count(addrs.real(ADMIN)));
                let started = start_background(&addrs.to_real(command));
                if let Some(before) = before {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while subscriber_count(addrs.real(ADMIN)) <= before {
                        assert!(
                            Instant::now() < deadline,
                            "{at}: {command:?} never subscribed"
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                if let Some(shown) = shown {
                    let lines: Vec<String> = shown.lines().map(String::from).collect();
                    wait_for_lines(&at, name, &started.output, &lines, &addrs);
                }
                background.insert(name.to_string(), started);
            }
            ["run"] => {
                for (command, shown) in commands_with_output(&block.lines) {
                    let stdout = run_bounded(&addrs.to_real(&command), Duration::from_secs(30));
                    if let Some(shown) = shown {
                        let printed = addrs.to_shown(stdout.trim_end());
                        assert!(
                            matches_shown(&printed, &shown),
                            "{at}: {command:?} printed\n{printed}\nbut the README shows\n{shown}"
                        );
                    }
                }
            }
            ["output", name] => {
                let output = &background
                    .get(name)
                    .unwrap_or_else(|| panic!("{at}: no background command {name:?}"))
                    .output;
                wait_for_lines(&at, name, output, &block.lines, &addrs);
            }
            _ => panic!("{at}: unknown tour marker {:?}", block.marker),
        }
    }
    drop(background);
    // "Stop the gateway with Ctrl-C: it drains its clients and exits 0."
    assert!(readme.contains("Ctrl-C"));
    stop_gateway(gateway.expect("a gateway ran"));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// What the set-up text promises beside its command: the demo page it
/// sends the reader to, and the test script.
fn check_set_up(readme: &str, public: &str) {
    let demo = format!("http://{PUBLIC}/rt/demo");
    assert!(readme.contains(&demo), "the README names {demo}");
    let (status, body) = http_get(public, "/rt/demo");
    assert_eq!(status, 200, "the demo page");
    assert!(body.contains("pollbridge demo"));
    assert!(readme.contains("./scripts/test.sh"));
    let script = std::fs::metadata(repo().join("scripts/test.sh")).expect("scripts/test.sh");
    assert!(std::os::unix::fs::PermissionsExt::mode(&script.permissions()) & 0o111 != 0);
}

#[test]
fn the_tour_helpers_match_what_they_should() {
    assert!(matches_shown(r#"{"a":1,"b":2}"#, r#"{"a":1,…}"#));
    assert!(matches_shown("abc", "abc"));
    assert!(!matches_shown("abd", "abc"));
    assert!(!matches_shown(r#"{"b":1}"#, r#"{"a":…}"#));
    assert!(matches_shown("x-1-y-2-z", "x…1…2…z"));
    assert!(!matches_shown("x-2-y-1-z", "x…1…2…z"));
    let lines = ["id: 1".to_string(), String::new(), "id: 2".to_string()];
    assert!(contains_in_order("retry: 9\n\nid: 1\n\nid: 2\n", &lines));
    assert!(!contains_in_order("id: 2\n\nid: 1\n", &lines));
    let cmds = commands_with_output(&["a".into(), "# 1".into(), "# 2".into(), "b".into()]);
    assert_eq!(
        cmds,
        [
            ("a".to_string(), Some("1\n2".to_string())),
            ("b".to_string(), None)
        ]
    );
}

// ---- links -----------------------------------------------------------------

/// The project's markdown files (git-tracked ones; build and tool caches
/// skipped).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') || ["target", "node_modules"].contains(&name.as_str()) {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(repo(), &mut files);
    files.sort();
    files
}

/// Markdown outside fenced code blocks and inline code.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            // Drop inline code spans.
            let kept: String = line
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
                .join("");
            out.push_str(&kept);
        }
        out.push('\n');
    }
    out
}

/// Link targets: `[text](target)` and `![alt](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        if let Some(end) = after.find(')') {
            targets.push(after[..end].trim().to_string());
        }
        rest = after;
    }
    targets
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to
/// dashes (the same rule scripts/prometheus/check_rule_files.py uses).
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let base = github_anchor(&heading.replace('`', ""));
                let n = seen.entry(base.clone()).or_insert(0);
                found.insert(if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                });
                *n += 1;
            }
        }
        let mut rest = line;
        while let Some(at) = rest.find("<a id=\"") {
            let after = &rest[at + 7..];
            if let Some(end) = after.find('"') {
                found.insert(after[..end].to_string());
            }
            rest = after;
        }
    }
    found
}

#[test]
fn markdown_links_resolve() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let rel = file.strip_prefix(repo()).unwrap().display().to_string();
            // A link must stay inside the repository: a clone has nothing else.
            let inside = resolved
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count()
                > 0
                && resolved.canonicalize().is_ok_and(|p| p.starts_with(repo()));
            if !resolved.exists() || !inside {
                broken.push(format!("{rel}: {target} (no such file in the repository)"));
                continue;
            }
            if let Some(anchor) = anchor {
                if resolved.extension().is_some_and(|e| e == "md")
                    && !anchors(&read(&resolved)).contains(anchor)
                {
                    broken.push(format!("{rel}: {target} (no such anchor)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_helpers_read_markdown_like_github() {
    assert_eq!(
        github_anchor("Migrating a page with the bridge"),
        "migrating-a-page-with-the-bridge"
    );
    assert_eq!(
        github_anchor("Channel rules: [[channels]]"),
        "channel-rules-channels"
    );
    assert_eq!(
        github_anchor("Alert: PollbridgeBusNotReady"),
        "alert-pollbridgebusnotready"
    );
    let text = "# A\n## B `c`\n```\n# not a heading\n```\n## B c\n<a id=\"x\"></a>\n";
    let found: Vec<_> = anchors(text).into_iter().collect();
    assert_eq!(found, ["a", "b-c", "b-c-1", "x"]);
    assert_eq!(
        link_targets("see [a](docs/a.md#b) and `[c](d)` ![e](f.svg)\n```\n[g](h)\n```\n"),
        ["docs/a.md#b", "f.svg"]
    );
}

// ---- the pages -------------------------------------------------------------

fn docs_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn the_readme_is_short_and_links_every_page() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; the front door stays under {README_MAX_LINES}: move detail to docs/"
    );
    for page in docs_pages()
        .into_iter()
        .chain([repo().join("BENCHMARKS.md")])
    {
        let rel = page.strip_prefix(repo()).unwrap().display().to_string();
        assert!(
            readme.contains(&format!("]({rel}")),
            "README.md does not link {rel}"
        );
    }
}

/// Sentences (of prose and tables, not code) long enough that two copies
/// would be duplicated text rather than a shared phrase: whitespace
/// collapsed, split after `.`, `:`, `;`, `!` or `?`.
fn sentences(text: &str) -> Vec<String> {
    let mut flat = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            flat.push_str(line.trim());
            flat.push(' ');
        }
    }
    let words: Vec<&str> = flat.split_whitespace().collect();
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for word in words {
        current.push(word);
        if word.ends_with(['.', ':', ';', '!', '?']) {
            let sentence = current.join(" ");
            if sentence.len() >= 80 {
                out.push(sentence);
            }
            current.clear();
        }
    }
    out
}

#[test]
fn no_sentence_is_in_two_pages() {
    let files = markdown_files();
    let mut first_seen: BTreeMap<String, String> = BTreeMap::new();
    let mut duplicated = Vec::new();
    for file in files {
        let rel = file.strip_prefix(repo()).unwrap().display().to_string();
        for sentence in sentences(&read(&file)) {
            match first_seen.get(&sentence) {
                Some(first) if *first != rel => {
                    duplicated.push(format!("{first} and {rel}: {sentence}"))
                }
                _ => {
                    first_seen.insert(sentence, rel.clone());
                }
            }
        }
    }
    assert!(
        duplicated.is_empty(),
        "text in two pages (keep one, link it from the other):\n{}",
        duplicated.join("\n")
    );
}

#[test]
fn the_layout_names_every_directory() {
    let layout = read(&repo().join("docs/layout.md"));
    let mut missing = Vec::new();
    let mut check = |dir: &Path| {
        let name = format!("{}/", dir.file_name().unwrap().to_string_lossy());
        if !layout.contains(&name) {
            missing.push(dir.strip_prefix(repo()).unwrap().display().to_string());
        }
    };
    for entry in std::fs::read_dir(repo()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let ignored = name.starts_with('.')
            || ["target", "tmp", "artifacts", "node_modules"].contains(&name.as_str());
        if path.is_dir() && !ignored {
            check(&path);
        }
    }
    fn src_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.push(path.clone());
                src_dirs(&path, out);
            }
        }
    }
    let mut dirs = Vec::new();
    src_dirs(&repo().join("src"), &mut dirs);
    for dir in dirs {
        check(&dir);
    }
    assert!(
        missing.is_empty(),
        "docs/layout.md does not name: {missing:?}"
    );
}

#[test]
fn the_chart_shows_the_measured_figures() {
    const HEADER: &str = "| transport | wire bytes per delivered message |";
    let table = read(&repo().join("docs/operations.md"));
    let svg = read(&repo().join("assets/bytes-per-message.svg"));
    let readme = read(&repo().join("README.md"));
    let picture = readme
        .lines()
        .find(|l| l.contains("](assets/bytes-per-message.svg)"))
        .expect("the README shows assets/bytes-per-message.svg");
    let rows: Vec<(String, String)> = table
        .lines()
        .skip_while(|l| !l.starts_with(HEADER))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].to_string(), cells[1].to_string())
        })
        .collect();
    assert!(rows.len() >= 2, "the measured table in docs/operations.md");
    for (transport, bytes) in rows {
        assert!(
            svg.contains(&format!(">{transport}<")) && svg.contains(&format!(">{bytes} B<")),
            "assets/bytes-per-message.svg does not show {transport}: {bytes} B \
             (run python3 scripts/docs/bytes-chart.py)"
        );
        assert!(
            picture.contains(&bytes),
            "the README's picture text does not say {transport}: {bytes}"
        );
    }
}

#[test]
fn the_readme_shows_the_toy_backend_config_as_it_is() {
    let readme = read(&repo().join("README.md"));
    let example = read(&repo().join("examples/toy-backend/pollbridge.toml"));
    let example_lines: BTreeSet<&str> = example.lines().map(str::trim_end).collect();
    let mut in_toml = false;
    let mut shown = 0;
    for line in readme.lines() {
        match (in_toml, line.trim_start().starts_with("```")) {
            (false, true) => in_toml = line.trim() == "```toml",
            (true, true) => in_toml = false,
            (true, false) if !line.trim().is_empty() => {
                shown += 1;
                assert!(
                    example_lines.contains(line.trim_end()),
                    "README.md shows {line:?}, which examples/toy-backend/pollbridge.toml does not have"
                );
            }
            _ => {}
        }
    }
    assert!(shown > 0, "the README shows the bridge configuration");
}
