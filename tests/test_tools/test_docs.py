"""The README and docs/ name only configs and scripts that exist, link only
to files and headings that exist, and the README stays short.

Standard library and pytest only: these checks read text files.
"""
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / 'README.md'
MAX_README_LINES = 250

# A repository path of a config, tool or demo script as the docs write it:
# `configs/x.py`, `tools/a/b.py`, `tools/x.sh`, `demo/x.py`, optionally
# after `./` or `../` (a config of the user's own that inherits ours). Not
# when it continues another path (`mmdeploy/tools/test.py`, a codebase's
# `.mim/tools/...`): the look-behind refuses a preceding path character.
REPO_PATH = re.compile(r'(?<![\w./-])(?:\./|(?:\.\./)+)?'
                       r'((?:configs|tools|demo)/[\w./-]*\w\.(?:py|sh))\b')
# [text](target) or [text](target "title"); images too.
LINK = re.compile(r'\[[^\]]*\]\(\s*([^)\s]+)(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^(```|~~~).*?^\1[ \t]*$', re.M | re.S)
HEADING = re.compile(r'^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)


def doc_files() -> List[Path]:
    """README.md and every markdown page under docs/."""
    return [README] + sorted((ROOT / 'docs').rglob('*.md'))


def repo_paths(text: str) -> Set[str]:
    """The config, tool and demo paths a text names (code blocks too:
    the commands are there)."""
    return set(REPO_PATH.findall(text))


def without_code_blocks(text: str) -> str:
    return FENCE.sub('', text)


def relative_links(text: str) -> List[str]:
    """Link targets outside code blocks that are not URLs or mail
    addresses (same-page anchors included)."""
    targets = LINK.findall(without_code_blocks(text))
    return [
        target for target in targets
        if not re.match(r'[a-zA-Z][a-zA-Z0-9+.-]*:', target)
    ]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup and punctuation
    dropped, lower case, spaces as hyphens."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return text.replace(' ', '-')


def anchors(path: Path) -> Set[str]:
    """Every anchor of a markdown file's headings, with GitHub's ``-1``,
    ``-2`` ... suffixes for repeated headings."""
    seen: Dict[str, int] = {}
    found = set()
    text = without_code_blocks(path.read_text(encoding='utf-8'))
    for heading in HEADING.findall(text):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f'{anchor}-{count}')
    return found


def named_paths() -> List[Tuple[Path, str]]:
    return [(doc, name) for doc in doc_files()
            for name in sorted(repo_paths(doc.read_text(encoding='utf-8')))]


def links() -> List[Tuple[Path, str]]:
    return [(doc, target) for doc in doc_files()
            for target in relative_links(doc.read_text(encoding='utf-8'))]


def test_the_docs_exist():
    missing = [
        name for name in ('README.md', 'docs/README.md')
        if not (ROOT / name).is_file()
    ]
    assert not missing, f'missing: {missing}'
    assert len(doc_files()) > 5, 'docs/ has hardly any pages'


def test_path_pattern_finds_what_the_docs_write():
    text = ('python tools/train.py configs/fcaformer_l2_in1k.py\n'
            './tools/dist_train.sh configs/synthetic/a_b.py 8\n'
            "_base_ = ['../configs/x.py']  `tools/lint.sh`, demo/seg_demo.py."
            '\nmmdeploy/tools/test.py my_configs/y.py $(d)/.mim/tools/z.py '
            'configs/fcaformer_l*_in1k.py configs/...')
    assert repo_paths(text) == {
        'tools/train.py', 'configs/fcaformer_l2_in1k.py',
        'tools/dist_train.sh', 'configs/synthetic/a_b.py', 'configs/x.py',
        'tools/lint.sh', 'demo/seg_demo.py'
    }


def test_link_pattern_finds_relative_links_only():
    text = ('[a](docs/x.md) [b](x.md#part "title") [c](https://e.org/y.md)'
            ' [d](#here) [e](mailto:me@e.org)\n```\n[f](in/code.md)\n```\n')
    assert relative_links(text) == ['docs/x.md', 'x.md#part', '#here']


def test_github_anchor():
    assert github_anchor('`weights_only` loading') == 'weights_only-loading'
    assert github_anchor('Detectors: mmdeploy 1.3.1') == \
        'detectors-mmdeploy-131'
    assert github_anchor('FcaFormer-L0, the plain model') == \
        'fcaformer-l0-the-plain-model'


def test_the_docs_name_configs_and_tools():
    # A pattern that matched nothing would pass the existence test below
    # vacuously; the README alone names the configs and the two tools.
    readme = repo_paths(README.read_text(encoding='utf-8'))
    assert {'tools/setup_env.sh', 'tools/train.py', 'tools/test.py'} <= readme
    assert any(name.startswith('configs/') for name in readme)
    assert len(named_paths()) > 50


def test_every_named_config_and_tool_exists():
    missing = [
        f'{doc.relative_to(ROOT)}: {name}' for doc, name in named_paths()
        if not (ROOT / name).is_file()
    ]
    assert not missing, ('the docs name files that do not exist:\n' +
                         '\n'.join(missing))


def test_every_relative_link_resolves():
    found = links()
    assert len(found) > 20, 'hardly any relative links found'
    broken = []
    for doc, target in found:
        file_part, _, anchor = target.partition('#')
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f'{doc.relative_to(ROOT)}: {target} (no file)')
        elif anchor and path.suffix == '.md' and anchor not in anchors(path):
            broken.append(f'{doc.relative_to(ROOT)}: {target} (no heading)')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


def test_readme_is_short():
    lines = README.read_text(encoding='utf-8').splitlines()
    assert 0 < len(lines) <= MAX_README_LINES, (
        f'README.md has {len(lines)} lines; keep it at most '
        f'{MAX_README_LINES} and move details into docs/')
