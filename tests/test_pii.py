"""filters/pii: each kind is found with its exact span and masked, also when its digits are written
full-width or spaced apart; look-alikes (wrong checksums, impossible dates, years, prices, versions,
numbers inside longer numbers) are left alone."""

from __future__ import annotations

import pytest

from filters.pii import KINDS, PiiMatch, find_pii, redact_pii

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def with_id_check(first17: str) -> str:
    """A resident identity number: 17 digits and their GB 11643-1999 check character."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def luhn_ok(digits: str) -> bool:
    doubled = [int(d) * 2 if i % 2 else int(d) for i, d in enumerate(reversed(digits))]
    return sum(d - 9 if d > 9 else d for d in doubled) % 10 == 0


def with_luhn_check(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


def without_luhn_check(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if not luhn_ok(prefix + d))


VALID_ID = with_id_check("11010519900307123")  # Beijing, born 1990-03-07
VALID_ID_X = next(i for i in (with_id_check(f"440305198802291{n:02d}") for n in range(100)) if i.endswith("X"))
LEAP_DAY_ID = with_id_check("44030520000229456")
# Luhn-valid cards of several lengths, from real IIN prefixes.
CARD_16 = with_luhn_check("622202123456789")  # UnionPay
CARD_19 = with_luhn_check("621226123456789012")
CARD_13 = with_luhn_check("422222222222")
AMEX_15 = "378282246310005"


def spans(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) for each match."""
    return [(m.kind, text[m.start : m.end]) for m in find_pii(text)]


def test_test_helpers_agree_with_known_numbers():
    assert luhn_ok("4111111111111111") and luhn_ok("5500000000000004") and luhn_ok(AMEX_15)
    assert not luhn_ok("4111111111111112")
    assert with_id_check("11010519491231002") == "11010519491231002X"  # the standard's own example


# --- email -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("write to alice@example.com today", "alice@example.com"),
        ("alice+newsletter@mail.example.co.uk", "alice+newsletter@mail.example.co.uk"),
        ("first.last-name_1@sub.domain-x.example.org.", "first.last-name_1@sub.domain-x.example.org"),
        ("邮箱是alice@example.com谢谢", "alice@example.com"),
        ("联系：bob.wang@company.cn，或者", "bob.wang@company.cn"),
        ("<mailto:carol@example.net>", "carol@example.net"),
    ],
)
def test_email_found(text: str, address: str):
    assert spans(text) == [("email", address)]


@pytest.mark.parametrize(
    "text",
    ["user@localhost", "@example.com", "alice@", "alice@example", "a @ b.com", "alice@example.c", "x@y.123"],
)
def test_email_look_alikes_ignored(text: str):
    assert find_pii(text) == []


# --- phone -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("call 13812345678 now", "13812345678"),
        ("手机13812345678联系", "13812345678"),
        ("电话：+86 138 1234 5678。", "+86 138 1234 5678"),
        ("+8613912345678", "+8613912345678"),
        ("0086-150-1234-5678", "0086-150-1234-5678"),
        ("(+86) 18612345678", "(+86) 18612345678"),
        ("138 1234 5678", "138 1234 5678"),
        ("138-1234-5678", "138-1234-5678"),
        ("London +44 20 7946 0958", "+44 20 7946 0958"),
        ("+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
        ("SF +1 415-555-0132.", "+1 415-555-0132"),
        ("(415) 555-0132", "(415) 555-0132"),
        ("office: 415-555-0132, ext 4", "415-555-0132"),
        ("1-800-555-0199", "1-800-555-0199"),
    ],
)
def test_phone_found(text: str, number: str):
    assert spans(text) == [("phone", number)]


@pytest.mark.parametrize(
    "text",
    [
        "000013812345678000000",  # 11 digits inside a 21-digit run
        "12345678901381234567",  # ... and inside a 20-digit run
        "a13812345678",
        "13812345678b",
        "pi is 3.13812345678",
        "in the year 2024",
        "price 1299.00 yuan",
        "价格¥1299.00元",
        "order 12345678 shipped",
        "订单号 20240101",
        "version 1.2.3 and v13.8.12345",
        "12812345678",  # no mobile prefix starts with 12
        "+12 345",  # too short for a number
        "+1 234 567 890 123 456",  # 16 digits: too long for E.164
        "+4420794609581234",
        "415-555-01329",  # glued to a fifth digit
        "serial 415-555-0132-7",
    ],
)
def test_phone_look_alikes_ignored(text: str):
    assert find_pii(text) == []


# --- cn_id -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [VALID_ID, VALID_ID_X, VALID_ID_X.lower(), LEAP_DAY_ID])
def test_cn_id_found(number: str):
    assert spans(f"身份证号{number}，请核对") == [("cn_id", number)]
    assert spans(f"ID: {number}") == [("cn_id", number)]


def wrong_check(number: str) -> str:
    """The same number with another check character (not Luhn-valid, so not a card either)."""
    return next(
        number[:17] + c for c in "0123456789X" if c != number[17] and not luhn_ok(number[:17] + c.replace("X", "0"))
    )


@pytest.mark.parametrize("number", [wrong_check(VALID_ID), wrong_check(VALID_ID_X)])
def test_cn_id_with_a_mistyped_check_character_is_still_masked(number: str):
    assert spans(f"身份证号{number}") == [("cn_id", number)]


@pytest.mark.parametrize(
    "number",
    [
        with_id_check("11010519900230123"),  # 30 February
        with_id_check("11010519901301123"),  # month 13
        with_id_check("11010518991231123"),  # born before 1900
        with_id_check("11010521000101123"),  # born in 2100
        with_id_check("01010519900307123"),  # region codes do not start with 0
    ],
)
def test_cn_id_invalid_ignored(number: str):
    assert "cn_id" not in [m.kind for m in find_pii(number)]


def test_cn_id_wins_over_a_card_of_the_same_span():
    number = next(
        i for i in (with_id_check(f"3201021985061{n:04d}") for n in range(1000)) if i[-1] != "X" and luhn_ok(i)
    )
    assert spans(number) == [("cn_id", number)]


def test_cn_id_inside_longer_digit_run_ignored():
    # The extra digit is chosen so that the 19 digits are no card either.
    assert find_pii(without_luhn_check(VALID_ID)) == []
    assert find_pii(next(d + VALID_ID for d in "123456789" if not luhn_ok(d + VALID_ID))) == []


# --- digits written full-width or spaced apart ---------------------------------------------------

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
# Spaced numbers that are no personal data, after each case: they must stay as they are.
LOOK_ALIKES = "; in 2024 10 people came, 3 4 5 6 left, 1 2 3 4 5 6 7 8 9 10 11 12, page 13 of 1234 5678, ４.５ stars"


@pytest.mark.parametrize(
    ("text", "kind", "found"),
    [
        (f"身份证 {VALID_ID[:4]} {VALID_ID[4:8]} {VALID_ID[8:12]} {VALID_ID[12:16]} {VALID_ID[16:]} 谢谢", "cn_id",
         f"{VALID_ID[:4]} {VALID_ID[4:8]} {VALID_ID[8:12]} {VALID_ID[12:16]} {VALID_ID[16:]}"),
        ("身份证 1101 0519 4912 3100 12 谢谢", "cn_id", "1101 0519 4912 3100 12"),
        (f"ID {VALID_ID[:6]}\u3000{VALID_ID[6:14]}\u3000{VALID_ID[14:]}.", "cn_id",
         f"{VALID_ID[:6]}\u3000{VALID_ID[6:14]}\u3000{VALID_ID[14:]}"),
        (f"身份证{VALID_ID.translate(FULL_WIDTH)}号", "cn_id", VALID_ID.translate(FULL_WIDTH)),
        (f"卡 {VALID_ID[:9].translate(FULL_WIDTH)} {VALID_ID[9:]}", "cn_id",
         f"{VALID_ID[:9].translate(FULL_WIDTH)} {VALID_ID[9:]}"),
        ("手机 1 3 8 1 2 3 4 5 6 7 8 请回电", "phone", "1 3 8 1 2 3 4 5 6 7 8"),
        ("call 138 12 34 56 78 today", "phone", "138 12 34 56 78"),
        ("电话：１３８１２３４５６７８", "phone", "１３８１２３４５６７８"),
        ("电话：１３８ １２３４ ５６７８。", "phone", "１３８ １２３４ ５６７８"),
        ("tel 138\u00a01234\u00a05678", "phone", "138\u00a01234\u00a05678"),
        ("card ４１１１ １１１１ １１１１ １１１１ ok", "bank_card", "４１１１ １１１１ １１１１ １１１１"),
    ],
)
def test_full_width_and_spaced_digits_are_found_on_their_original_span(text: str, kind: str, found: str):
    assert spans(text + LOOK_ALIKES) == [(kind, found)]
    assert redact_pii(text + LOOK_ALIKES) == text.replace(found, f"[{kind.upper()}]") + LOOK_ALIKES


# --- bank_card -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "card"),
    [
        ("card 4111 1111 1111 1111 exp 12/26", "4111 1111 1111 1111"),
        ("5500-0000-0000-0004", "5500-0000-0000-0004"),
        ("4111111111111111", "4111111111111111"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        (f"卡号{CARD_16}谢谢", CARD_16),
        (f"卡号：{CARD_19[:6]} {CARD_19[6:]}", f"{CARD_19[:6]} {CARD_19[6:]}"),
        (f"old visa {CARD_13}", CARD_13),
        ("4111 1111 1111 1111 123", "4111 1111 1111 1111"),  # the CVV after it is no part of it
    ],
)
def test_card_found(text: str, card: str):
    assert spans(text) == [("bank_card", card)]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",
        "4111111111111112",
        without_luhn_check("622202123456789"),
        without_luhn_check("62220212345678901"),
        "4111  1111 1111 1111",  # double space: two numbers too short to be cards
        "4111_1111_1111_1111",
        with_luhn_check("41111111111"),  # 12 digits
        with_luhn_check("41111111111111111111"),  # 21 digits
        "x4111111111111111",
        "4111111111111111y",
    ],
)
def test_card_look_alikes_ignored(text: str):
    assert find_pii(text) == []


def test_two_cards_in_one_run_of_groups():
    text = "4111 1111 1111 1111 5500 0000 0000 0004"
    assert spans(text) == [("bank_card", "4111 1111 1111 1111"), ("bank_card", "5500 0000 0000 0004")]


# --- ip --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("server 192.168.1.20 down", "192.168.1.20"),
        ("10.0.0.1:8080", "10.0.0.1"),
        ("IP地址是8.8.8.8。", "8.8.8.8"),
        ("max 255.255.255.255", "255.255.255.255"),
        ("0.0.0.0/0", "0.0.0.0"),
        ("host 2001:db8:85a3::8a2e:370:7334 up", "2001:db8:85a3::8a2e:370:7334"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("loopback ::1", "::1"),
        ("fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        ("mapped ::ffff:192.0.2.1 here", "::ffff:192.0.2.1"),  # IPv6 wins over the IPv4 inside it
        ("2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
    ],
)
def test_ip_found(text: str, address: str):
    assert spans(text) == [("ip", address)]


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",
        "999.1.1.1",
        "1.1.1.256",
        "version 1.2.3.4.5",
        "v1.2.3.4",
        "1.2.3",
        "meeting at 12:30:45",
        "mac 00:1a:2b:3c:4d:5e",
        "std::vector and a::b",
        "1:2:3:4:5:6:7:8:9",
        "1::2::3",
    ],
)
def test_ip_look_alikes_ignored(text: str):
    assert find_pii(text) == []


# --- secret ----------------------------------------------------------------------------------------

SK_KEY = "sk-" + "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xY2zA4bC6dE8fG0hJ2"
SK_PROJ_KEY = "sk-proj-" + "Ab1_Cd2-Ef3" * 12
WG_KEY = "wg-" + "Zq4_rT8-yU2i" * 3 + "O9pAs3D"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6" * 3
GITHUB_PAT = "github_pat_11ABCDEFG0123456789abc_" + "x1Y2z3" * 10
SLACK_TOKEN = "xoxb-123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE_KEY = "AIzaSy" + "D4f6H8j0L2n4P6r8T0v2X4z6B8d0F2h4J"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3Jb7Q9kzV2mR8tL5nP1wY4cD6fH0gJ2kL4mN6pQ8rS0tU2v\n"
    "W4xY6zA8bC0dE2fG4hJ6kL8mN0pQ2rS4tU6vW8xY0zA2bC4dE6fG8hJ0kL2mN4p==\n-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    "token", [SK_KEY, SK_PROJ_KEY, WG_KEY, AWS_KEY_ID, GITHUB_TOKEN, GITHUB_PAT, SLACK_TOKEN, GOOGLE_KEY, JWT, PEM]
)
def test_secret_token_found(token: str):
    assert spans(f"leaked: {token} oops") == [("secret", token)]
    assert spans(f"密钥{token}请删除") == [("secret", token)]


@pytest.mark.parametrize("length", [42, 44])
def test_wardgate_key_needs_43_characters(length: int):
    assert find_pii("wg-" + ("Zq4_rT8-yU2i" * 4)[:length]) == []


def test_truncated_pem_block_masks_its_base64_lines():
    text = "key: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n...(truncated)"
    assert redact_pii(text) == "key: [SECRET]\n...(truncated)"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Authorization: Bearer abc123.def456-ghi_789", "abc123.def456-ghi_789"),
        ("curl -H 'authorization: bearer " + WG_KEY + "'", WG_KEY),
        ("api_key=hunter2-hunter2", "hunter2-hunter2"),
        ("OPENAI_API_KEY=my-key-123", "my-key-123"),
        ('{"password": "correct horse battery staple", "user": "bob"}', "correct horse battery staple"),
        ("password: 'p@ss:w0rd!'", "p@ss:w0rd!"),
        ("secret: xyz789", "xyz789"),
        ("client_secret = s3cr3t.", "s3cr3t"),
        ("https://x.example/cb?token=abcd1234&state=42", "abcd1234"),
        ("X-Api-Key: 0123456789abcdef", "0123456789abcdef"),
        ("db_password=pa55", "pa55"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("{secretKey: abc-123}", "abc-123"),
        ("password_hash: $2b$12$abc", "$2b$12$abc"),
        ("密码：abc123，别告诉别人", "abc123"),
        ("我的密码是Qwerty12谢谢", "Qwerty12"),
        ("口令: letmein", "letmein"),
        ('password="unterminated', "unterminated"),
    ],
)
def test_secret_value_found(text: str, value: str):
    assert spans(text) == [("secret", value)]


@pytest.mark.parametrize(
    "text",
    [
        "sk-learn-compatible-estimators-everywhere",  # no digit: a slug, not a key
        "AKIA1234",
        "ghp_short123",
        "max_tokens=100",
        "tokenizer: bert-base",
        "token_count: 512",
        "token_type: refresh",
        "secretary: Jane",
        "the secret is out",
        "Bearer authentication",  # no digit: a word, not a token
        "Bearer abc1",  # too short
        "password: [SECRET]",
        "token=<redacted>",
        "secret: (none)",
        "密码是什么？",
        "-----BEGIN PUBLIC KEY-----",
        "eyJhbGciOiJIUzI1NiJ9 alone",
    ],
)
def test_secret_look_alikes_ignored(text: str):
    assert find_pii(text) == []


def test_assignment_and_bearer_both_masked():
    assert redact_pii("token: Bearer abcdef12345678") == "token: [SECRET] [SECRET]"


# --- several kinds, overlaps, redaction ------------------------------------------------------------


def test_several_kinds_with_exact_spans():
    text = (
        f"用户alice@example.com，手机13812345678，身份证{VALID_ID}，卡号4111 1111 1111 1111，"
        f"登录IP 10.0.0.1, api_key={SK_KEY}"
    )
    expected = [
        ("email", "alice@example.com"),
        ("phone", "13812345678"),
        ("cn_id", VALID_ID),
        ("bank_card", "4111 1111 1111 1111"),
        ("ip", "10.0.0.1"),
        ("secret", SK_KEY),
    ]
    matches = find_pii(text)
    assert [(m.kind, text[m.start : m.end]) for m in matches] == expected
    assert [m.start for m in matches] == [text.index(value) for _, value in expected]
    assert all(isinstance(m, PiiMatch) and m.kind in KINDS for m in matches)


def test_longer_match_wins_an_overlap():
    # The phone is inside the address; the address is longer.
    assert spans("QQ邮箱13812345678@qq.com") == [("email", "13812345678@qq.com")]


def test_equal_length_overlap_goes_to_the_earlier_kind():
    # The assignment's value is exactly an e-mail address: same span, email comes first in KINDS.
    assert spans("secret=alice@example.com") == [("email", "alice@example.com")]


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("邮箱是alice@example.com谢谢", "邮箱是[EMAIL]谢谢"),
        ("call +1 415-555-0132 or 13812345678", "call [PHONE] or [PHONE]"),
        (f"身份证：{VALID_ID}。", "身份证：[CN_ID]。"),
        ("pay with 5500-0000-0000-0004 please", "pay with [BANK_CARD] please"),
        ("from 192.168.0.1 and 2001:db8::1", "from [IP] and [IP]"),
        ('{"password": "hunter2", "api_key": "' + SK_KEY + '"}', '{"password": "[SECRET]", "api_key": "[SECRET]"}'),
        ("Authorization: Bearer " + JWT, "Authorization: Bearer [SECRET]"),
        ("a@b.co 8.8.8.8 4111111111111111", "[EMAIL] [IP] [BANK_CARD]"),
    ],
)
def test_redaction_output(text: str, redacted: str):
    assert redact_pii(text) == redacted


IDEMPOTENCE_TEXTS = [
    "邮箱是alice@example.com谢谢，手机+86 138 1234 5678",
    f"id {VALID_ID} card 4111-1111-1111-1111 ip ::ffff:10.0.0.1",
    "password=[x] token: Bearer abcdef12345678 secret: 'q1w2e3'",
    f"{PEM}\n{JWT} {AWS_KEY_ID}",
    "密码：abc123 api_key=alice@example.com (415) 555-0132",
]


@pytest.mark.parametrize("text", IDEMPOTENCE_TEXTS)
def test_redaction_is_idempotent(text: str):
    once = redact_pii(text)
    assert once != text
    assert redact_pii(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "Nothing to see here: version 1.2.3, year 2024, price 1299.00, order 12345678.",
        "今天天气很好，我们去公园散步吧。",
        "std::vector<int> v; x = a::b;",
        "Use a Bearer token and keep your secret safe.",
    ],
)
def test_text_without_pii_comes_back_unchanged(text: str):
    assert find_pii(text) == []
    assert redact_pii(text) is text


def test_empty_text():
    assert find_pii("") == []
    assert redact_pii("") == ""


# --- adversarial input: no catastrophic backtracking ----------------------------------------------


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "text",
    [
        "1" * 50_000,
        "1234 " * 10_000,
        "1." * 25_000,
        "1:" * 25_000,
        "1-" * 25_000,
        "+1 " * 15_000,
        "a@" * 10_000,
        "a@" + "a." * 25_000,
        "a" * 50_000 + "@",
        "sk-" + "a" * 50_000,
        "eyJ" + "a" * 50_000 + ".eyJ" + "a" * 50_000,
        "password=" * 5_000,
        "-----BEGIN PRIVATE KEY-----" * 2_000,
        "Bearer " + "a" * 50_000,
        "手机" * 25_000,
        "1 " * 25_000,
        "１ " * 25_000,
        "1\u3000\u3000\u3000" * 12_000,
    ],
)
def test_pathological_input_completes(text: str):
    find_pii(text)
