"""Build the shipped lexicons from the public data sets in shared/data, reproducibly.

    python -m policies.lexicons.build [DATA_DIR] [--out DIR]
        DATA_DIR defaults to ../shared/data beside the repository, DIR to policies/lexicons/

writes en_hate_ngrams.txt and zh_sexist_abuse.txt, each with a header that names
its source, license and the curation applied, and the hit rates measured on held-out benign and
offensive text through the real matcher (filters.blacklist, with its normalisation). Same data in,
same files out.

Curation exists because a lexicon is matched as literals, and a literal on a common word flags
ordinary text: Chinese terms match anywhere (a one-character term matches inside thousands of
words), Latin ones as whole words. Each step below is counted in the header. Data used to decide
what to drop (the curation split) is kept apart from the data the rates are measured on.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filters.blacklist import Blacklist, Rule
from filters.normalize import normalize
from policies.schema import parse_lexicon

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "data"

# English: the n-grams kept are those containing a slur. These stand alone as slurs...
EN_SLURS = {"nigger", "niggers", "faggot", "faggots", "spic", "wetback", "wetbacks"}
EN_SLUR_PHRASES = {"white trash", "jungle bunny", "spear chucker", "chink eyed"}
# ...these have an ordinary meaning alone (a cigarette, Homo sapiens, an embankment, "a chink in the
# armour", a raccoon, reclaimed "queer") and are kept only inside the source's longer n-grams.
EN_CONTEXT_SLURS = {"fag", "fags", "queer", "queers", "dyke", "dykes", "homo", "chink", "chinks", "coon", "cunt"}
EN_IDIOMS = {"chinks in"}  # "chinks in the armour"
# Davidson et al. found "nigga" mostly in offensive-but-not-hateful, in-group use: n-grams whose only
# slur it is are left out of a *hate* lexicon.


@dataclass
class Curation:
    source: list[str]
    steps: list[tuple[str, int]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def apply(self, reason: str, terms: list[str], keep: Callable[[str], bool]) -> list[str]:
        kept = [term for term in terms if keep(term)]
        self.steps.append((reason, len(terms) - len(kept)))
        return kept


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: list[str]
    note: str = ""


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _jsonl(path: Path, key: str) -> list[str]:
    return [json.loads(line)[key] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def _curation_half(text: str) -> bool:
    """A fixed split of a data set without one: crc32 even → curation, odd → evaluation."""
    return zlib.crc32(text.encode("utf-8")) % 2 == 0


def _dedupe_normalised(terms: list[str]) -> list[str]:
    seen, kept = set(), []
    for term in terms:
        key = normalize(term).text
        if key not in seen:
            seen.add(key)
            kept.append(term)
    return kept


def _hit_rate(terms: list[str], texts: list[str]) -> float:
    blacklist = Blacklist([Rule("lexicon", "lexicon", "flag", tuple(terms))])
    return sum(bool(blacklist.scan(text)) for text in texts) / len(texts)


def _hits_by_term(terms: list[str], texts: list[str]) -> list[int]:
    """For each term, the number of texts it matches."""
    blacklist = Blacklist([Rule(str(index), "lexicon", "flag", (term,)) for index, term in enumerate(terms)])
    counts = [0] * len(terms)
    for text in texts:
        for rule_id in {match.rule_id for match in blacklist.scan(text)}:
            counts[int(rule_id)] += 1
    return counts


# ---------------------------------------------------------------------------------------- English


def build_english(data: Path) -> tuple[Curation, list[Corpus], list[str]]:
    """The curated n-grams, the corpora to measure them on, and the header's source lines."""
    source = data / "en/toxicity/davidson_hate_ngrams.csv"
    with source.open(encoding="utf-8", newline="") as handle:  # the file ends lines with bare CR
        ngrams = [row["ngram"].strip() for row in csv.DictReader(handle)]
    curation = Curation(ngrams)

    def has_slur(ngram: str) -> bool:
        words = ngram.split()
        if any(phrase in f" {ngram} " for phrase in (f" {p} " for p in EN_SLUR_PHRASES)):
            return True
        return bool(EN_SLURS & set(words)) or (len(words) > 1 and bool(EN_CONTEXT_SLURS & set(words)))

    terms = curation.apply(
        "no slur: ordinary words or general profanity ('blame the', 'married to', 'is white', 'hate you', "
        "'fucking hate'), 'nigga'-only n-grams, and context-dependent words standing alone "
        "('homo', 'fags', 'dykes', 'queers', 'chinks')",
        ngrams, has_slur)
    terms = curation.apply("idiom ('chinks in' the armour)", terms, lambda t: t not in EN_IDIOMS)

    # A longer n-gram containing a kept shorter one as whole words matches no text the shorter one
    # misses.
    shorter = list(terms)
    terms = curation.apply("redundant: contains a shorter kept n-gram ('you fucking faggot' ⊃ 'faggot')", terms,
                           lambda t: not any(o != t and f" {o} " in f" {t} " for o in shorter))
    alpaca_train = [row["instruction"] for row in json.loads(
        (data / "en/benign_prompts/alpaca_harmless_train.json").read_text(encoding="utf-8"))]
    benign_hits = dict(zip(terms, _hits_by_term(terms, alpaca_train), strict=True))
    terms = curation.apply("matches a benign instruction of alpaca_harmless_train (curation only)",
                           terms, lambda t: benign_hits[t] == 0)
    curation.kept = terms

    davidson = _csv(data / "en/toxicity/davidson_labeled_data.csv")
    alpaca_val = [row["instruction"] for row in json.loads(
        (data / "en/benign_prompts/alpaca_harmless_val.json").read_text(encoding="utf-8"))]
    toxigen = data / "en/toxicity/toxigen"

    def toxigen_lines(prefix: str) -> list[str]:
        sentences = []
        for path in sorted(toxigen.glob(f"{prefix}_*_1k.txt")):
            for line in path.read_text(encoding="utf-8").splitlines():
                sentences += [part.strip(" -") for part in line.split("\\n") if part.strip(" -")]
        return sentences

    corpora = [
        Corpus("davidson_labeled_data class 0 (hate)", [r["tweet"] for r in davidson if r["class"] == "0"],
               "in-sample: the n-grams were mined from these tweets"),
        Corpus("davidson_labeled_data class 1 (offensive, not hate)",
               [r["tweet"] for r in davidson if r["class"] == "1"]),
        Corpus("davidson_labeled_data class 2 (neither)", [r["tweet"] for r in davidson if r["class"] == "2"]),
        Corpus("toxigen hate_* (implicit hate, machine-written)", toxigen_lines("hate")),
        Corpus("toxigen neutral_* (mentions a group, benign)", toxigen_lines("neutral")),
        Corpus("alpaca_harmless_val instructions (benign)", alpaca_val),
    ]
    header = [
        "en_hate_ngrams: English hate-speech slurs and slur phrases, one term a line (whole-word match).",
        f"Source: shared/data/en/toxicity/davidson_hate_ngrams.csv (sha256 {_sha256(source)[:16]}...), the",
        "  hate n-gram lexicon of t-davidson/hate-speech-and-offensive-language: Davidson, Warmsley, Macy,",
        "  Weber, 'Automated Hate Speech Detection and the Problem of Offensive Language', ICWSM 2017.",
        "License: MIT (the source repository's).",
    ]
    return curation, corpora, header


# ---------------------------------------------------------------------------------------- Chinese


def build_chinese(data: Path) -> tuple[Curation, list[Corpus], list[str]]:
    source = data / "zh/offensive/swsr_sexhatelex.txt"
    raw = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    curation = Curation(raw)
    terms = curation.apply("mis-encoded in the source (contains U+FFFD)", raw, lambda t: "\ufffd" not in t)
    terms = curation.apply("pure ASCII (English words, site names, 'sb', 'TM', 'GG', '87': ambiguous or "
                           "not Chinese; English is covered by en_hate_ngrams)", terms, lambda t: not t.isascii())
    terms = curation.apply("a single character: it matches inside ordinary words (干, 日, 死, 鸡, 马 ...)",
                           terms, lambda t: len(normalize(t).text) > 1)
    first_spellings = set(_dedupe_normalised(terms))
    terms = curation.apply("duplicate once normalised (a traditional or full-width spelling of a kept term)",
                           terms, lambda t: t in first_spellings)

    review = HERE / "review" / "swsr_not_abusive.txt"
    reviewed = {word for line in review.read_text(encoding="utf-8").splitlines()
                if not line.startswith("#") for word in line.split()}
    unknown = sorted(reviewed - set(raw))
    if unknown:  # the review must describe this source, not another version of it
        raise SystemExit(f"{review}: not in {source}: {' '.join(unknown)}")
    terms = curation.apply("ordinary vocabulary on reading the list (review/swsr_not_abusive.txt: everyday "
                           "words, anatomy/medicine/law, history, idioms)", terms, lambda t: t not in reviewed)

    swsr = _csv(data / "zh/offensive/swsr_sexcomment.csv")
    cold_train = _csv(data / "zh/offensive/cold_train.csv")
    cold_dev = _csv(data / "zh/offensive/cold_dev.csv")
    cur_pos = [r["TEXT"] for r in cold_train if r["label"] == "1"] + [
        r["comment_text"] for r in swsr if r["label"] == "1" and _curation_half(r["comment_text"])]
    cur_neg = [r["TEXT"] for r in cold_train if r["label"] == "0"] + [
        r["comment_text"] for r in swsr if r["label"] == "0" and _curation_half(r["comment_text"])]
    pos_hits = dict(zip(terms, _hits_by_term(terms, cur_pos), strict=True))
    neg_hits = dict(zip(terms, _hits_by_term(terms, cur_neg), strict=True))

    def indicative(term: str) -> bool:
        # Seen in non-offensive text, a term must be at least twice as frequent in offensive text.
        return neg_hits[term] < 2 or pos_hits[term] / len(cur_pos) >= 2 * neg_hits[term] / len(cur_neg)

    terms = curation.apply(
        f"not indicative of offence on the curation split (COLD train + the even-crc32 half of SWSR "
        f"comments, {len(cur_pos):,} offensive / {len(cur_neg):,} not): in >= 2 non-offensive texts and "
        "less than twice as frequent in offensive ones", terms, indicative)
    curation.kept = terms

    corpora = [
        Corpus("swsr_sexcomment label 1 (sexist), odd-crc32 half",
               [r["comment_text"] for r in swsr if r["label"] == "1" and not _curation_half(r["comment_text"])]),
        Corpus("swsr_sexcomment label 0 (not sexist, same topics), odd-crc32 half",
               [r["comment_text"] for r in swsr if r["label"] == "0" and not _curation_half(r["comment_text"])]),
        Corpus("cold_dev label 1 (offensive)", [r["TEXT"] for r in cold_dev if r["label"] == "1"]),
        Corpus("cold_dev label 0 (safe, same topics)", [r["TEXT"] for r in cold_dev if r["label"] == "0"]),
        Corpus("belle_eval_set questions (benign)", _jsonl(data / "zh/benign_prompts/belle_eval_set.jsonl",
                                                           "question")),
        Corpus("belle_eval_set std_answer (benign, answer-like)",
               _jsonl(data / "zh/benign_prompts/belle_eval_set.jsonl", "std_answer")),
        Corpus("cvalues_sensitive_but_benign prompts", _jsonl(
            data / "zh/benign_prompts/cvalues_sensitive_but_benign.jsonl", "prompt")),
    ]
    header = [
        "zh_sexist_abuse: Chinese sexist, abusive and vulgar terms, one a line (matched anywhere, after",
        "  traditional->simplified, full-width and separator folding).",
        f"Source: shared/data/zh/offensive/swsr_sexhatelex.txt (sha256 {_sha256(source)[:16]}...), SexHateLex",
        "  of aggiejiang/SWSR: Jiang, Yang, Zubiaga, 'SWSR: A Chinese Dataset and Lexicon for Online",
        "  Sexism Detection', Online Social Networks and Media 27, 2022.",
        "License: MIT (the source repository's).",
        "The benign rates are optimistic: the reviewer had seen which raw terms matched the benign sets.",
    ]
    return curation, corpora, header


# ---------------------------------------------------------------------------------------- output


def render(name: str, curation: Curation, corpora: list[Corpus], header: list[str]) -> tuple[str, list[str]]:
    rates = []
    for corpus in corpora:
        rate, raw = _hit_rate(curation.kept, corpus.texts), _hit_rate(curation.source, corpus.texts)
        note = f"; {corpus.note}" if corpus.note else ""
        rates.append(f"  {rate:6.2%} (uncurated {raw:6.2%})  {corpus.name} ({len(corpus.texts):,} texts{note})")
    lines = [
        *header,
        f"Built by `python -m policies.lexicons.build` ({name}); edit build.py or review/, not this file.",
        f"Curation: {len(curation.source):,} source terms, {len(curation.kept):,} kept. Dropped:",
        *(f"  {count:5,}  {reason}" for reason, count in curation.steps),
        "Hit rates (texts with at least one match), measured by build.py on text not used for curation:",
        *rates,
    ]
    body = "\n".join(f"# {line}" for line in lines) + "\n\n" + "\n".join(curation.kept) + "\n"
    return body, rates


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m policies.lexicons.build", description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA, help="the shared data directory")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the lexicons")
    args = parser.parse_args(argv)
    data = args.data
    if not (data / "DATA.md").is_file():
        raise SystemExit(f"{data}: not the shared data directory (no DATA.md); pass it as the argument")
    for name, build in (("en_hate_ngrams", build_english), ("zh_sexist_abuse", build_chinese)):
        curation, corpora, header = build(data)
        text, rates = render(name, curation, corpora, header)
        target = args.out / f"{name}.txt"
        parse_lexicon(target, text.encode("utf-8"))  # what the loader would refuse, refuse now
        target.write_text(text, encoding="utf-8")
        print(f"{target}: {len(curation.kept)} of {len(curation.source)} terms")
        print("\n".join(rates))


if __name__ == "__main__":
    main(sys.argv[1:])
