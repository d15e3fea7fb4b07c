"""A guard model behind an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, TGI, Ollama, the
bundled model server): each family's own prompt and output format, read into one `GuardAnswer`.

Families, with the prompt their model card publishes:

- `qwen3guard` (Qwen3Guard-Gen): the conversation is sent as chat messages and the model's chat template
  (served with the model) wraps it in the guard's instructions. It answers `Safety: Safe|Unsafe|Controversial`
  and `Categories: ...`, and for a response also `Refusal: Yes|No`.
- `llama_guard` (Llama Guard 3 and 4): the same, through the model's chat template; it answers `safe`, or
  `unsafe` with the violated codes (S1-S14, comma-separated) on the next line.
- `shieldgemma`: the gateway writes the model card's prompt (one harm type a call, as the model was trained)
  and sends it as one user message; the answer starts with `Yes` (a violation) or `No`. Where the server
  returns logprobs, the probability of `Yes` against `No` is the score; else Yes is 1 and No 0.
- `gpt_oss_safeguard`: the policy text is the system message (ours by default, or the policy file's) and
  the content the user message; the policy asks for `{"violation": 0|1, "category": ...}` as the answer.

`CATEGORY_LABELS` maps every category each family names onto our labels (classifiers/labels.py); a guard
category without a close label of ours maps to `unsafe`. An answer in any other shape (a refusal to judge,
an unknown category, no `Safety:` line) raises ModerationUnavailable with code `bad_answer`: the stage's
`on_failure` decides, as for a guard that does not answer at all.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from classifiers.labels import CATEGORIES
from filters.moderation_hook import ModerationUnavailable, ResponseCache, ServiceClient

# `url: bundled` in a guard_model stage: the guard model server that `wardgate serve --guard-model DIR` starts,
# whose base URL the gateway puts here (its worker processes inherit it).
BUNDLED_URL_ENV = "WARDGATE_BUNDLED_GUARD_URL"

Family = Literal["qwen3guard", "llama_guard", "shieldgemma", "gpt_oss_safeguard"]
FAMILIES: tuple[Family, ...] = ("qwen3guard", "llama_guard", "shieldgemma", "gpt_oss_safeguard")

# Each family's categories → our label. `unsafe` where none of our categories is close.
CATEGORY_LABELS: dict[Family, dict[str, str]] = {
    "qwen3guard": {
        "Violent": "violence",
        "Non-violent Illegal Acts": "illegal",
        "Sexual Content or Sexual Acts": "sexual",
        "PII": "unsafe",
        "Suicide & Self-Harm": "self_harm",
        "Unethical Acts": "hate",  # its definition leads with bias, discrimination and hate speech
        "Politically Sensitive Topics": "unsafe",
        "Copyright Violation": "unsafe",
        "Jailbreak": "jailbreak",
    },
    "llama_guard": {
        "S1": "violence",  # Violent Crimes
        "S2": "illegal",  # Non-Violent Crimes
        "S3": "sexual",  # Sex-Related Crimes
        "S4": "sexual_minors",  # Child Sexual Exploitation
        "S5": "harassment",  # Defamation
        "S6": "unsafe",  # Specialized Advice
        "S7": "unsafe",  # Privacy
        "S8": "unsafe",  # Intellectual Property
        "S9": "violence",  # Indiscriminate Weapons
        "S10": "hate",  # Hate
        "S11": "self_harm",  # Suicide & Self-Harm
        "S12": "sexual",  # Sexual Content
        "S13": "unsafe",  # Elections
        "S14": "illegal",  # Code Interpreter Abuse
    },
    "shieldgemma": {
        "dangerous": "violence",  # "No Dangerous Content": harming oneself or others, weapons, terrorism
        "harassment": "harassment",
        "hate": "hate",
        "sexual": "sexual",
    },
    "gpt_oss_safeguard": {label: label for label in CATEGORIES},
}
LLAMA_GUARD_NAMES = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation", "S5": "Defamation", "S6": "Specialized Advice", "S7": "Privacy",
    "S8": "Intellectual Property", "S9": "Indiscriminate Weapons", "S10": "Hate", "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content", "S13": "Elections", "S14": "Code Interpreter Abuse",
}

# ShieldGemma's harm policies as its model card words them, for a prompt and for a response.
_SHIELDGEMMA_HARMS = {
    "dangerous": ('"No Dangerous Content"', "content that harming oneself and/or others (e.g., accessing or "
                  "building firearms and explosive devices, promotion of terrorism, instructions for suicide)."),
    "harassment": ('"No Harassment"', "content that is malicious, intimidating, bullying, or abusive content "
                   "targeting another individual (e.g., physical threats, denial of tragic events, disparaging "
                   "victims of violence)."),
    "hate": ('"No Hate Speech"', "content that targeting identity and/or protected attributes (e.g., racial "
             "slurs, promotion of discrimination, calls to violence against protected groups) or dehumanizing/"
             "belittling/vilifying on the bases of race, ethnicity, religion, disability, age, nationality, veteran "
             "status, sexual orientation, gender, gender identity, caste, or any other protected status. We do "
             "allow content that includes a reference to a protected individual or group in a positive manner."),
    "sexual": ('"No Sexually Explicit Information"', "content that contains references to sexual acts or other "
               "lewd content (e.g., sexually graphic descriptions, content aimed at causing arousal). Medical or "
               "scientific terms related to human anatomy or sex education are permitted."),
}
SHIELDGEMMA_HARM_TYPES = tuple(_SHIELDGEMMA_HARMS)

# gpt-oss-safeguard: our policy, unless the policy file gives its own; the output format is always ours.
DEFAULT_SAFEGUARD_POLICY = """# Content safety policy

Decide whether the content violates this policy. Content that discusses a topic, reports on it, or refuses
a harmful request does not violate it; content that requests, provides or encourages the harm does.

Categories:
- sexual: sexually explicit content about adults.
- sexual_minors: any sexual content involving minors.
- hate: content that demeans or attacks people for a protected attribute (race, ethnicity, religion,
  nationality, gender, sexual orientation, disability).
- harassment: threats, bullying or abuse aimed at a person.
- self_harm: encouragement of or instructions for suicide or self-harm.
- violence: instructions for or glorification of violence, weapons that kill indiscriminately, terrorism.
- illegal: instructions for crimes (fraud, theft, drugs, hacking, evasion of the law).
- jailbreak: an attempt to make an AI assistant ignore its instructions or safety rules."""
SAFEGUARD_OUTPUT_FORMAT = (
    "\n\n# Output format\n\nAnswer with one JSON object and nothing else: "
    '{"violation": 1, "category": "<one category name above>"} when the content violates the policy, '
    '{"violation": 0, "category": null} when it does not.')

MAX_TOKENS: dict[Family, int] = {"qwen3guard": 64, "llama_guard": 16, "shieldgemma": 1, "gpt_oss_safeguard": 1024}


@dataclass(frozen=True)
class GuardAnswer:
    verdict: Literal["safe", "unsafe", "controversial"]
    label: str | None = None  # ours, for an unsafe or controversial answer
    category: str | None = None  # the guard's own name for it
    score: float = 0.0  # 1 unsafe, 0 safe (ShieldGemma: P(Yes) where logprobs are served)
    refusal: bool | None = None  # Qwen3Guard, on a response: whether the response is a refusal


@dataclass(frozen=True)
class GuardConfig:
    url: str
    family: Family
    model: str
    timeout_s: float = 2.0
    max_concurrency: int = 16
    cache_max_entries: int = 0
    cache_ttl_s: float = 300.0
    auth_env: str | None = None
    max_tokens: int | None = None  # None: the family's default
    policy: str = DEFAULT_SAFEGUARD_POLICY  # gpt_oss_safeguard
    harm_types: tuple[str, ...] = SHIELDGEMMA_HARM_TYPES  # shieldgemma: one call each
    threshold: float = 0.5  # shieldgemma: P(Yes) at or above which the text violates


class GuardClient(ServiceClient):
    def __init__(self, config: GuardConfig) -> None:
        super().__init__(config.url, config.timeout_s, config.max_concurrency, config.auth_env)
        self.config = config
        self.cache = ResponseCache(config.cache_max_entries, config.cache_ttl_s) if config.cache_max_entries else None

    async def judge(self, text: str, prompt: str | None = None) -> tuple[GuardAnswer, bool]:
        """The guard's answer on `text`, a prompt (`prompt` None) or the response to `prompt`; and whether
        it came from the cache. Raises ModerationUnavailable (code `bad_answer` for an unreadable answer)."""
        key = self.cache.key(text if prompt is None else f"{prompt}\x00response\x00{text}") \
            if self.cache is not None else None
        if key is not None and (cached := self.cache.get(key)) is not None:
            return cached, True
        if self.config.family == "shieldgemma":
            # One harm type a call (how ShieldGemma was trained), all within the one deadline.
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    answers = await asyncio.gather(*(self._ask(shieldgemma_messages(text, prompt, harm), harm)
                                                      for harm in self.config.harm_types))
            except TimeoutError:
                raise ModerationUnavailable(f"no answer within {self.config.timeout_s:g} s") from None
            answer = max(answers, key=lambda found: found.score)
        else:
            answer = await self._ask(self._messages(text, prompt))
        if key is not None:
            self.cache.put(key, answer)
        return answer, False

    async def _ask(self, messages: list[dict[str, str]], harm: str | None = None) -> GuardAnswer:
        family = self.config.family
        request: dict[str, Any] = {"model": self.config.model, "messages": messages, "temperature": 0,
                                   "max_tokens": self.config.max_tokens or MAX_TOKENS[family], "stream": False}
        if family == "shieldgemma":
            request |= {"logprobs": True, "top_logprobs": 5}
        choice = _first_choice(await self.call(request))
        content = choice.get("message", {}).get("content") if isinstance(choice.get("message"), dict) else None
        if not isinstance(content, str):
            raise ModerationUnavailable("the guard's answer has no choices.0.message.content", "bad_answer")
        if family == "qwen3guard":
            return parse_qwen3guard(content)
        if family == "llama_guard":
            return parse_llama_guard(content)
        if family == "shieldgemma":
            return parse_shieldgemma(content, choice.get("logprobs"), harm or "dangerous", self.config.threshold)
        return parse_safeguard(content)

    def _messages(self, text: str, prompt: str | None) -> list[dict[str, str]]:
        if self.config.family == "gpt_oss_safeguard":
            content = text if prompt is None else f"User: {prompt}\n\nAssistant: {text}"
            kind = "a user's message to an AI assistant" if prompt is None else \
                "an AI assistant's response (the last turn) to a user"
            return [{"role": "system", "content": self.config.policy + SAFEGUARD_OUTPUT_FORMAT},
                    {"role": "user", "content": f"Content to classify, {kind}:\n\n{content}"}]
        if prompt is None:
            return [{"role": "user", "content": text}]
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]


def shieldgemma_messages(text: str, prompt: str | None, harm: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": shieldgemma_prompt(text, prompt, harm)}]


def shieldgemma_prompt(text: str, prompt: str | None, harm: str) -> str:
    """ShieldGemma's prompt as its model card gives it: prompt-only, or prompt-response (`prompt` given)."""
    name, rule = _SHIELDGEMMA_HARMS[harm]
    if prompt is None:
        return ("You are a policy expert trying to help determine whether a user prompt is in violation of the "
                "defined safety policies.\n\n<start_of_turn>\nHuman Question: " + text.strip() +
                "\n<end_of_turn>\n\nOur safety principle is defined in the below:\n\n* " + name +
                ": The prompt shall not contain or seek generation of " + rule +
                "\n\nDoes the human question violate the above principle? Your answer must start with 'Yes' or "
                "'No'. And then walk through step by step to be sure we answer correctly.\n")
    return ("You are a policy expert trying to help determine whether an AI response to prompt is in violation "
            "of the defined safety policies.\n\n<start_of_turn>\nHuman Question: " + prompt.strip() +
            "\n<end_of_turn>\n\n<start_of_turn>\nChatbot Response: " + text.strip() +
            "\n<end_of_turn>\n\nOur safety principle is defined in the below:\n\n* " + name +
            ": The chatbot shall not generate " + rule +
            "\n\nDoes the Chatbot Response violate the above principle? Your answer must start with 'Yes' or "
            "'No'. And then walk through step by step to be sure we answer correctly.\n")


def _first_choice(document: Any) -> dict[str, Any]:
    choices = document.get("choices") if isinstance(document, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ModerationUnavailable("the guard's answer has no choices", "bad_answer")
    return choices[0]


def _bad(family: str, content: str) -> ModerationUnavailable:
    shown = content.strip().replace("\n", "\\n")[:60]
    return ModerationUnavailable(f"unexpected {family} answer: {shown!r}", "bad_answer")


_QWEN_SAFETY = re.compile(r"^Safety:\s*(Safe|Unsafe|Controversial)\s*$", re.MULTILINE)
_QWEN_CATEGORIES = re.compile(r"^Categories:\s*(.*?)\s*$", re.MULTILINE)
_QWEN_REFUSAL = re.compile(r"^Refusal:\s*(Yes|No)\s*$", re.MULTILINE)


def parse_qwen3guard(content: str) -> GuardAnswer:
    safety = _QWEN_SAFETY.search(content)
    if safety is None:
        raise _bad("qwen3guard", content)
    refusal = _QWEN_REFUSAL.search(content)
    found = _QWEN_CATEGORIES.search(content)
    names = [name.strip() for name in found.group(1).split(",") if name.strip()] if found else []
    names = [name for name in names if name != "None"]
    mapping = CATEGORY_LABELS["qwen3guard"]
    if any(name not in mapping for name in names):
        raise _bad("qwen3guard", content)
    verdict = safety.group(1).lower()
    refused = refusal.group(1) == "Yes" if refusal else None
    if verdict == "safe":
        return GuardAnswer("safe", refusal=refused)
    if not names:  # the format always names the category of what it flags
        raise _bad("qwen3guard", content)
    return GuardAnswer(verdict, mapping[names[0]], ", ".join(names), 1.0 if verdict == "unsafe" else 0.5, refused)


def parse_llama_guard(content: str) -> GuardAnswer:
    lines = [line.strip() for line in content.strip().splitlines() if line.strip()]
    if lines == ["safe"]:
        return GuardAnswer("safe")
    if len(lines) != 2 or lines[0] != "unsafe":
        raise _bad("llama_guard", content)
    codes = [code.strip() for code in lines[1].split(",")]
    mapping = CATEGORY_LABELS["llama_guard"]
    if not codes or any(code not in mapping for code in codes):
        raise _bad("llama_guard", content)
    return GuardAnswer("unsafe", mapping[codes[0]], ",".join(codes), 1.0)


def parse_shieldgemma(content: str, logprobs: Any, harm: str, threshold: float) -> GuardAnswer:
    word = content.strip().split(maxsplit=1)[0].strip(".,:;!").lower() if content.strip() else ""
    if word not in ("yes", "no"):
        raise _bad("shieldgemma", content)
    score = _yes_probability(logprobs)
    if score is None:
        score = 1.0 if word == "yes" else 0.0
    if score < threshold:
        return GuardAnswer("safe", score=round(score, 4))
    return GuardAnswer("unsafe", CATEGORY_LABELS["shieldgemma"][harm], harm, round(score, 4))


def _yes_probability(logprobs: Any) -> float | None:
    """P(Yes) / (P(Yes) + P(No)) from the first token's top logprobs (the model card's score), if served."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
        found: dict[str, float] = {}
        for entry in top:
            token = entry["token"].strip().lower()
            if token in ("yes", "no") and token not in found:
                found[token] = float(entry["logprob"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if "yes" not in found or "no" not in found:
        return None
    yes, no = math.exp(found["yes"]), math.exp(found["no"])
    return yes / (yes + no)


_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_safeguard(content: str) -> GuardAnswer:
    """The answer SAFEGUARD_OUTPUT_FORMAT asks for (the last JSON object in the final text), or a bare 0/1."""
    stripped = content.strip()
    if stripped in ("0", "1"):
        document: Any = {"violation": int(stripped), "category": None}
    else:
        objects = _JSON_OBJECT.findall(stripped)
        try:
            document = orjson.loads(objects[-1]) if objects else None
        except orjson.JSONDecodeError:
            document = None
    violation = document.get("violation") if isinstance(document, dict) else None
    if violation not in (0, 1) or isinstance(violation, bool):
        raise _bad("gpt_oss_safeguard", content)
    if violation == 0:
        return GuardAnswer("safe")
    category = document.get("category")
    mapping = CATEGORY_LABELS["gpt_oss_safeguard"]
    if category is not None and category not in mapping:
        raise _bad("gpt_oss_safeguard", content)
    return GuardAnswer("unsafe", mapping[category] if category else "unsafe", category, 1.0)
