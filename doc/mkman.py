#!/usr/bin/env python3
"""mkman.py — writes almanac(1) and almanac.conf(5) from their one source.

The one source of the options is conf/almanac.conf: a comment block, then
the options it describes as `name value` (set, with its default) or
`#name value` (unset by default; an example), blank lines between blocks,
`# ---- Title ----` starting a section. The one source of the commands is
doc/commands.txt. Nothing in a page is written by hand here but the frame
(NAME, the few sentences of DESCRIPTION, FILES, SEE ALSO).

Usage: mkman.py --conf conf/almanac.conf --commands doc/commands.txt
                --version 0.1.0 --out DIR
writes DIR/almanac.1, DIR/almanac.conf.5 and, gzipped reproducibly (no
name, no time stamp), DIR/almanac.1.gz and DIR/almanac.conf.5.gz.
Standard library only; run by CMake at build time.
"""
import argparse
import gzip
import os
import re
import sys

OPTION_RE = re.compile(r"^(#?)([a-z][a-z0-9_]*)(?:\s+(.*))?$")
SECTION_RE = re.compile(r"^#\s*-{3,}\s*(.*?)\s*-{3,}\s*$")


def esc(text):
    """Text for troff: backslashes and dashes escaped, non-ASCII as \\[uXXXX], `x` bold."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else "\\[u%04X]" % ord(c) for c in text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    return text


def line(text):
    """One input line: a leading . or ' would be a request."""
    text = esc(text)
    return "\\&" + text if text[:1] in (".", "'") else text


class Block:
    def __init__(self):
        self.section = None  # a `# ---- X ----` header that opens this block
        self.runs = []  # [(text lines, [(set, name, value)])]


def parse_conf(path):
    """(intro lines, [Block]) of conf/almanac.conf; exits on a line it cannot read."""
    with open(path, encoding="utf-8") as f:
        raw = f.read().split("\n")
    intro, blocks, cur = [], [], None
    text, opts = [], []
    first = True

    def flush_run():
        nonlocal text, opts
        if text or opts:
            cur.runs.append((text, opts))
        text, opts = [], []

    for n, ln in enumerate(raw, 1):
        ln = ln.rstrip()
        if not ln:
            if first and intro:
                first = False
            elif cur is not None:
                flush_run()
                blocks.append(cur)
                cur = None
            continue
        if first:
            if not ln.startswith("#"):
                sys.exit("%s:%d: the file must open with a comment block" % (path, n))
            intro.append(ln[1:].strip())
            continue
        if cur is None:
            cur = Block()
        m = SECTION_RE.match(ln)
        if m:
            flush_run()
            if cur.runs:
                blocks.append(cur)
                cur = Block()
            cur.section = m.group(1)
            continue
        m = OPTION_RE.match(ln)
        if m and not ln.startswith("# "):
            if m.group(3) is None and m.group(1):
                sys.exit("%s:%d: an example option needs a value" % (path, n))
            opts.append((not m.group(1), m.group(2), m.group(3) or ""))
            continue
        if ln.startswith("#"):
            if opts:  # text after options starts the next run
                flush_run()
            text.append(ln[2:] if ln.startswith("# ") else ln[1:])
            continue
        sys.exit("%s:%d: neither a comment nor an option: %r" % (path, n, ln))
    if cur is not None:
        flush_run()
        blocks.append(cur)
    return intro, blocks


def prose(lines):
    """troff for comment lines: paragraphs, and indented examples kept as they are."""
    out, pre = [], False
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    for t in lines:
        if t.startswith("  ") and t.strip():
            if not pre:
                out += [".RS 2", ".nf"]
                pre = True
            out.append(line(t.strip()))
            continue
        if pre:
            out += [".fi", ".RE"]
            pre = False
        out.append(".PP" if not t.strip() else line(t))
    if pre:
        out += [".fi", ".RE"]
    return out


def conf_page(intro, blocks, version):
    out = [
        '.TH ALMANAC.CONF 5 "" "almanac %s" "File Formats"' % version,
        ".SH NAME",
        "almanac.conf \\- configuration of the almanac daemon",
        ".SH SYNOPSIS",
        ".B /etc/almanac/almanac.conf",
        ".SH DESCRIPTION",
    ]
    # The file's own first line names it ("almanac.conf — ..."): NAME says that.
    out += prose(intro[1:] if intro and intro[0].startswith("almanac.conf") else intro)
    out += [
        ".PP",
        "Below, an option shown as \\fBname\\fR \\fIvalue\\fR is set by default to that value;",
        "one marked \\fI(unset by default)\\fR is not set unless given, one marked",
        "\\fI(default: X)\\fR means X unless given; the value shown with either is an example.",
        ".SH OPTIONS",
    ]
    for b in blocks:
        if b.section:
            out += [".SS %s" % esc(b.section)]
        for text, opts in b.runs:
            if not opts:
                out += prose(text)
                continue
            out.append(".PP")
            for i, (is_set, name, value) in enumerate(opts):
                if i:
                    out.append(".br")
                # a block that says "Default: X." (or "Default (...): X.") names it
                said = re.search(r"Default[^:]*: (.+?)\.(?:\s|$)", " ".join(text))
                tail = ("" if is_set else f" \\fI(default: {esc(said.group(1))})\\fR" if said
                        else " \\fI(unset by default)\\fR")
                out.append("\\fB%s\\fR \\fI%s\\fR%s" % (esc(name), esc(value), tail))
            if text:
                out.append(".RS 4")
                out += prose(text)
                out.append(".RE")
    out += [
        ".SH FILES",
        ".TP",
        ".I /etc/almanac/almanac.conf",
        "the configuration of the packaged service (its \\fBdata_dir\\fR is \\fI/var/lib/almanac\\fR)",
        ".SH SEE ALSO",
        ".BR almanac (1)",
    ]
    return out


def parse_commands(path):
    sections, cur = {}, None
    with open(path, encoding="utf-8") as f:
        for n, ln in enumerate(f, 1):
            ln = ln.strip()
            if not ln or ln.startswith("#"):
                continue
            m = re.match(r"^\[(\w+)\]$", ln)
            if m:
                cur = sections.setdefault(m.group(1), [])
                continue
            if cur is None or " :: " not in ln:
                sys.exit("%s:%d: expected `[section]` or `SYNOPSIS :: text`" % (path, n))
            parts = [x.strip() for x in ln.split(" :: ")]
            if len(parts) > 3:
                sys.exit("%s:%d: at most SYNOPSIS :: text :: example" % (path, n))
            cur.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    for need in ("commands", "options", "environment", "exit"):
        if need not in sections:
            sys.exit("%s: no [%s] section" % (path, need))
    return sections


def synopsis(syn):
    """Words in capitals (and their pieces) italic, the rest bold."""
    words = []
    for w in syn.split(" "):
        words.append(re.sub(r"([A-Z][A-Z_:]*[A-Z]|[A-Z])", r"\\fI\1\\fB", esc(w)))
    return "\\fB" + " ".join(words) + "\\fR"


def cli_page(cmds, blocks, version):
    names = [(is_set, name, value) for b in blocks for _, opts in b.runs
             for is_set, name, value in opts]
    seen, options = set(), []
    for is_set, name, value in names:
        if name not in seen:
            seen.add(name)
            options.append((is_set, name, value))
    out = [
        '.TH ALMANAC 1 "" "almanac %s" "User Commands"' % version,
        ".SH NAME",
        "almanac \\- the state of every MQTT topic as a key tree, with history",
        ".SH SYNOPSIS",
        ".B almanac serve",
        "[\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-\\-\\fIOPTION\\fR \\fIVALUE\\fR ...]",
        ".br",
        ".B almanac",
        "[\\fB\\-s\\fR \\fIHOST:PORT\\fR] [\\fB\\-\\-token\\fR \\fIT\\fR] [\\fB\\-\\-tls\\fR]"
        " [\\fB\\-\\-cafile\\fR \\fIFILE\\fR] [\\fB\\-\\-json\\fR] \\fICOMMAND\\fR ...",
        ".br",
        ".B almanac version",
        ".SH DESCRIPTION",
        "\\fBalmanac serve\\fR sits beside an MQTT broker and keeps the state of every",
        "topic as a key tree in one SQLite file: looked up over HTTP, changed from",
        "scripts, watched live over WebSocket, Server-Sent Events and its session",
        "protocol, mirrored both ways to MQTT, and queried back in time.",
        "Every other command is a client of a running server.",
        ".SH COMMANDS",
    ]
    for syn, desc, _ in cmds["commands"]:
        out += [".TP", synopsis(syn), line(desc)]
    out += [".SH CLIENT OPTIONS", "Given before the command."]
    for syn, desc, _ in cmds["options"]:
        out += [".TP", synopsis(syn), line(desc)]
    out += [
        ".SH SERVER OPTIONS",
        "\\fBalmanac serve\\fR reads \\fB\\-c\\fR \\fIFILE\\fR, then the environment, then its",
        "flags; a flag wins over the environment, the environment over the file.",
        "Every option of",
        ".BR almanac.conf (5)",
        "can be given as \\fB\\-\\-\\fIname\\fR \\fIvalue\\fR:",
        ".PP",
        ".nf",
    ]
    for is_set, name, value in options:
        dflt = "default %s" % value if is_set else "unset by default"
        out.append("\\fB\\-\\-%s\\fR  (%s)" % (esc(name), esc(dflt)))
    out += [".fi", ".SH ENVIRONMENT"]
    out += [
        ".TP",
        "\\fBALMANAC_\\fR<\\fIOPTION\\fR>",
        "any option of",
        ".BR almanac.conf (5)",
        "for \\fBalmanac serve\\fR, named in capitals",
        "(\\fBALMANAC_DATA_DIR\\fR=\\fI/var/lib/almanac\\fR); better than the file for",
        "secrets such as \\fBALMANAC_ADMIN_TOKEN\\fR, \\fBALMANAC_JWT_KEY\\fR and",
        "\\fBALMANAC_BRIDGE_PASSWORD\\fR.",
    ]
    for syn, desc, _ in cmds["environment"]:
        out += [".TP", "\\fB%s\\fR" % esc(syn), line(desc)]
    out += [".SH EXAMPLES", ".nf"]
    for _, _, example in cmds["commands"]:
        if example:
            out += [line("$ almanac " + example)]
    out += [".fi", ".SH EXIT STATUS"]
    for syn, desc, _ in cmds["exit"]:
        out += [".TP", "\\fB%s\\fR" % esc(syn), line(desc)]
    out += [
        ".SH FILES",
        ".TP",
        ".I /etc/almanac/almanac.conf",
        "the configuration of the packaged service",
        ".TP",
        ".I /var/lib/almanac/almanac.db",
        "the database (SQLite, WAL mode), with \\fIblobs/\\fR beside it",
        ".TP",
        ".I /lib/systemd/system/almanac.service",
        "the systemd unit: \\fBsystemctl enable \\-\\-now almanac\\fR",
        ".SH SEE ALSO",
        ".BR almanac.conf (5),",
        ".BR mosquitto (8)",
    ]
    return out


def write(path, lines):
    text = ("\n".join(lines) + "\n").encode("utf-8")
    with open(path, "wb") as f:
        f.write(text)
    with open(path + ".gz", "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
            gz.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conf", required=True)
    ap.add_argument("--commands", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    intro, blocks = parse_conf(a.conf)
    cmds = parse_commands(a.commands)
    os.makedirs(a.out, exist_ok=True)
    write(os.path.join(a.out, "almanac.conf.5"), conf_page(intro, blocks, a.version))
    write(os.path.join(a.out, "almanac.1"), cli_page(cmds, blocks, a.version))


if __name__ == "__main__":
    main()
