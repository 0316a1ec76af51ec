"""The repository explains itself: no file points at documents users do not have, and every ``docs/<file>.md#anchor``
reference in the code names an existing file and heading."""
import re
import subprocess
from pathlib import Path

from realm_testing.paths import REPO_ROOT

# Built by concatenation so that this file does not match itself.
FORBIDDEN = ['EVENTS' + '_SPEC', 'MODEL' + '_SPEC', 'ROS' + '_CONVENTIONS', 'PAPER' + '_FACTS', 'ARCHITECTURE' + '.md',
             'ENVIRONMENT' + '_NOTES', '../' + 'spec', '../' + 'shared', 'shared' + '/spec', 'shared' + '/design']
DOC_REF = re.compile(r'docs/([A-Za-z0-9_-]+\.md)(?:#([A-Za-z0-9_-]+))?')


def _repository_text_files():
    """Tracked files plus new files that git does not ignore (what a clone or the next commit holds)."""
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO_ROOT,
                         capture_output=True, check=True).stdout.split(b'\0')
    for rel in filter(None, (r.decode() for r in out)):
        path = REPO_ROOT / rel
        if not path.is_file() or rel.startswith('test/data/') and not rel.endswith(('.md', '.txt')):
            continue
        data = path.read_bytes()
        if b'\0' in data[:8192]:
            continue        # binary
        yield rel, data.decode('utf-8', errors='replace')


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r'[`*_]{2,}|`', '', heading.strip().lower())
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def _anchors(doc: Path):
    anchors = set()
    in_code = False
    for line in doc.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            in_code = not in_code
        elif not in_code and re.match(r'#{1,6} ', line):
            anchors.add(github_anchor(line.lstrip('#')))
    return anchors


def test_github_anchor_rule():
    assert github_anchor(' Time stamps and clocks') == 'time-stamps-and-clocks'
    assert github_anchor('libcaer_cmp') == 'libcaer_cmp'
    assert github_anchor('DUNE-MASt3R decoder') == 'dune-mast3r-decoder'
    assert github_anchor('`evt3` (Prophesee)') == 'evt3-prophesee'


def test_no_file_cites_documents_outside_the_repository():
    hits = [f'{rel}:{n}: {line.strip()[:100]}' for rel, text in _repository_text_files()
            for n, line in enumerate(text.splitlines(), 1) if any(name in line for name in FORBIDDEN)]
    assert not hits, 'references to documents that are not in the repository (point into docs/ instead):\n' + \
        '\n'.join(hits)


def test_every_docs_reference_names_an_existing_file_and_heading():
    docs = REPO_ROOT / 'docs'
    anchors = {p.name: _anchors(p) for p in docs.glob('*.md')}
    assert {'formats.md', 'models.md', 'design.md', 'ros.md'} <= set(anchors)
    refs, bad = 0, []
    for rel, text in _repository_text_files():
        for n, line in enumerate(text.splitlines(), 1):
            for m in DOC_REF.finditer(line):
                refs += 1
                name, anchor = m.group(1), m.group(2)
                if name not in anchors:
                    bad.append(f'{rel}:{n}: docs/{name} does not exist')
                elif anchor and anchor not in anchors[name]:
                    bad.append(f'{rel}:{n}: docs/{name} has no heading #{anchor}')
    assert refs > 50, f'only {refs} references into docs/ found: is the pattern still right?'
    assert not bad, '\n'.join(bad)
