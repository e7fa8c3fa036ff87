"""Tests for verification-code extraction and masking (core.verification.codes)."""

import re
import time

import pytest

from core.verification.codes import extract_code, mask_codes_and_numbers

WHATSAPP_HASH = "4sgLq1p5sV6"  # the SMS Retriever app hash Android apps append; never a code

# (id, service slug or None, SMS text, expected code)
REAL_SMS: list[tuple[str, str | None, str, str]] = [
    # --- WhatsApp: typed without the dash
    ("whatsapp-en", "whatsapp", f"Your WhatsApp code: 123-456\n\nDon't share this code with others\n{WHATSAPP_HASH}", "123456"),
    ("whatsapp-en-no-service", None, f"Your WhatsApp code: 123-456\n\nDon't share this code with others\n{WHATSAPP_HASH}", "123456"),
    ("whatsapp-es", "whatsapp", f"<#> Tu código de WhatsApp: 482-913\nNo compartas este código con nadie\n{WHATSAPP_HASH}", "482913"),
    ("whatsapp-pt", None, "Seu código do WhatsApp: 731-004\n\nNão compartilhe este código\nq7R2+Kd9sXa", "731004"),
    ("whatsapp-ru", "WhatsApp", "Код WhatsApp: 905-118\nНикому не сообщайте этот код.", "905118"),
    ("whatsapp-business", "whatsapp_business", "Your WhatsApp Business code 771-203", "771203"),
    # --- Google: the form already shows "G-"
    ("google-en", "google", "G-582913 is your Google verification code.", "582913"),
    ("google-en-no-service", None, "G-582913 is your Google verification code.", "582913"),
    ("google-de", "gmail", "G-104928 ist dein Bestätigungscode von Google.", "104928"),
    ("google-fr", None, "G-663012 est votre code de validation Google.", "663012"),
    # --- Telegram: the login link repeats the code
    ("telegram-en", "telegram", "Telegram code: 52719\n\nYou can also tap on this link to log in:\nhttps://t.me/login/52719\n\nbv1kGI2ASFc", "52719"),
    ("telegram-en-no-service", None, "Telegram code: 52719\n\nYou can also tap on this link to log in:\nhttps://t.me/login/52719", "52719"),
    ("telegram-ru", "telegram", "Код подтверждения Telegram: 81732\n\nНикому не давайте код, даже если его требуют от имени Telegram!", "81732"),
    # --- Meta
    ("facebook-fb-prefix", "facebook", "FB-47291 is your Facebook confirmation code", "47291"),
    ("facebook-8-digits", None, "48213947 is your Facebook confirmation code", "48213947"),
    ("instagram-space", "instagram", "Use 384 219 to verify your Instagram account.", "384219"),
    ("instagram-space-no-service", None, "Use 384 219 to verify your Instagram account.", "384219"),
    ("instagram-pt", "ig", "123 456 é o seu código do Instagram. Não o compartilhe.", "123456"),
    # --- Microsoft
    ("microsoft-use-as", "microsoft", "Use 7341 as Microsoft account security code", "7341"),
    ("microsoft-colon", None, "Microsoft account security code: 5510283", "5510283"),
    ("microsoft-pt", None, "Use 5510 como código de segurança da conta Microsoft", "5510"),
    # --- Apple, including the WebOTP origin-bound line
    ("apple-webotp", "apple", "Your Apple Account code is: 829301. Don't share it with anyone.\n\n@apple.com #829301 %apple.com", "829301"),
    ("apple-id", None, "Your Apple ID Code is: 629011. Do not share it with anyone.", "629011"),
    ("apple-es", None, "Tu código de ID de Apple es: 771205. No lo compartas con nadie.", "771205"),
    ("webotp-generic", None, "Your verification code is 449102.\n\n@example.com #449102", "449102"),
    # --- Amazon
    ("amazon-otp", "amazon", "409182 is your Amazon OTP. Do not share it with anyone.", "409182"),
    ("amazon-otp-no-service", None, "409182 is your Amazon OTP. Do not share it with anyone.", "409182"),
    ("amazon-with-phone", None, "Amazon: Your code is 661904. Don't share it. If you didn't request it, call 1-888-280-4331.", "661904"),
    # --- Uber / Lyft, with a help number or short code in the same text
    ("uber-with-phone", "uber", "Your Uber code: 4821. Never share this code. Reply STOP ALL to +1 415-237-0403 to unsubscribe.", "4821"),
    ("uber-with-phone-no-service", None, "Your Uber code: 4821. Never share this code. Reply STOP ALL to +1 415-237-0403 to unsubscribe.", "4821"),
    ("uber-es", None, "Tu código de Uber es 7720. Nunca compartas este código.", "7720"),
    ("lyft-short-code", None, "Your Lyft code is 5910. Questions? Text HELP to 46645. Msg & data rates may apply.", "5910"),
    # --- PayPal, Discord, TikTok, X
    ("paypal", "paypal", "PayPal: 318402 is your security code. Don't share your code.", "318402"),
    ("paypal-no-service", None, "PayPal: 318402 is your security code. Don't share your code.", "318402"),
    ("discord", "discord", "Your Discord security code is: 902117", "902117"),
    ("discord-no-service", None, "Your Discord security code is: 902117", "902117"),
    ("tiktok", "tiktok", "[TikTok] 271930 is your verification code, valid for 5 minutes. To keep your account safe, never forward this code.", "271930"),
    ("tiktok-no-service", None, "[TikTok] 271930 is your verification code, valid for 5 minutes. To keep your account safe, never forward this code.", "271930"),
    ("x-alphanumeric", "x", "Your X confirmation code is b4k9xq2m", "b4k9xq2m"),
    ("x-digits", None, "592031 is your X verification code.", "592031"),
    ("twitter", "twitter", "Your Twitter confirmation code is 836104.", "836104"),
    ("steam-alphanumeric", None, "Your Steam login code: F7K2X", "F7K2X"),
    # --- banks: amounts, card endings, dates and times around the code
    ("bank-in-card-ending", None, "Your OTP for transaction of INR 1,500.00 at AMAZON on card ending 1234 is 482913. Valid for 10 mins. Do not share.", "482913"),
    ("bank-in-masked-card", None, "OTP 938201 for txn of Rs.5000 on your HDFC Bank Card XX1234 at FLIPKART on 01-05-24.", "938201"),
    ("bank-us-chase", None, "Chase: Your one-time code is 73491028. It expires in 10 minutes. Don't share it. We'll never call you for it.", "73491028"),
    ("bank-us-wells", None, "Wells Fargo: Your code is 390271. Call 1-800-869-3557 if you did not request it. Msg&data rates may apply.", "390271"),
    ("bank-es-bbva", None, "BBVA: Tu clave de seguridad es 590112 para la operación de 250,00 EUR en AMAZON el 05/01/2024 a las 12:30.", "590112"),
    ("bank-pt-nubank", None, "Nubank: seu código de verificação é 883201. Não compartilhe com ninguém. Compra de R$ 1.250,00 em 01/05/2024.", "883201"),
    ("bank-ru-sber", None, "Sberbank: Код: 615029. Никому не сообщайте код! Перевод 5 000 ₽ на карту *4432.", "615029"),
    ("bank-de-mtan-iban", None, "Ihre mTAN lautet 445566 für die Überweisung über 120,00 EUR an DE89 3704 0044 0532 0130 00.", "445566"),
    ("bank-de-tan-colon", None, "Sparkasse: Auftrag Überweisung an DE89 3704 0044 0532 0130 00, Betrag 120,00 EUR. TAN: 908172", "908172"),
    # --- other languages
    ("de", None, "Dein Bestätigungscode lautet 739201. Er ist 10 Minuten gültig.", "739201"),
    ("fr", None, "Votre code de vérification est : 502817. Il expire dans 10 minutes.", "502817"),
    ("ru", None, "Ваш код подтверждения: 3920. Никому его не сообщайте.", "3920"),
    ("zh-tencent", None, "【腾讯科技】您的验证码是837261，5分钟内有效，请勿泄露给他人。", "837261"),
    ("zh-alipay-with-date", None, "【支付宝】验证码：662018，您正在使用手机号登录，2024年5月1日前有效。", "662018"),
    ("zh-with-order-number", None, "验证码：123456。请在5分钟内输入。订单号：88776655", "123456"),
    ("zh-fullwidth-digits", None, "【京东】验证码：５８２０３９，请勿告诉他人。", "582039"),
    ("ar", None, "رمز التحقق الخاص بك هو 582039. لا تشاركه مع أي شخص.", "582039"),
    ("ar-arabic-indic-digits", None, "رمز التحقق الخاص بك هو ٥٨٢٠٣٩", "582039"),
    ("tr", None, "Doğrulama kodunuz: 417392. Bu kodu kimseyle paylaşmayın. 3 dakika geçerlidir.", "417392"),
    ("tr-uppercase-dotted-i", None, "İŞLEM ONAY KODUNUZ: 228104", "228104"),
    ("id-gojek", None, "Kode verifikasi Gojek kamu: 8271. JANGAN BERIKAN kode ini ke siapa pun termasuk pihak Gojek.", "8271"),
    ("it", None, "Il tuo codice di verifica è 902736. Non condividerlo con nessuno.", "902736"),
    ("pl", None, "Twój kod weryfikacyjny to 772901. Kod jest ważny 15 minut.", "772901"),
    ("vi", None, "Mã xác minh của bạn là 630192. Mã có hiệu lực trong 5 phút.", "630192"),
    ("ja", None, "認証コード：482910。このコードを他人に教えないでください。", "482910"),
    ("ko-naver", None, "[네이버] 인증번호 [482019]를 입력해주세요.", "482019"),
    ("nl", None, "Je verificatiecode is 318822. Deel deze code met niemand.", "318822"),
    ("hi", None, "आपका OTP 573920 है। इसे किसी के साथ साझा न करें।", "573920"),
    # --- a code plus things that must not win
    ("code-and-us-phone", None, "Your code is 123456. Call (415) 555-0100 with questions.", "123456"),
    ("code-and-date-time", None, "Your code is 123456 and expires at 12:30 on May 1, 2024", "123456"),
    ("code-and-iso-timestamp", None, "Your code: 3345 - sent 2024-05-01T12:30:00Z", "3345"),
    ("code-and-amounts", None, "Code 7731 confirms your payment of $12.50 (100 USD, €5, 1,000 points).", "7731"),
    ("code-and-year", None, "Code: 7734\nValid until 2025", "7734"),
    ("code-and-order-number", None, "Use 829104 to sign in. Your order 12345678 is on its way.", "829104"),
    ("code-and-order-id-chain", None, "Your Amazon OTP is 123456. Order #402-1234567-1234567 has shipped.", "123456"),
    ("code-and-account-id", None, "Your account ID 98765432 requested code 4821", "4821"),
    ("code-and-url", None, "Your code is 553190. Manage alerts at https://example.com/alerts/889977", "553190"),
    ("code-grouped-4-4", None, "Your verification code is 1234 5678", "12345678"),
    ("code-is-a-year-shaped-number", None, "Your code is 2024", "2024"),
    ("code-only", None, "482913", "482913"),
]  # fmt: skip

NO_CODE: list[tuple[str, str]] = [
    ("phones", "Call us at +1 415 555 0100 or (415) 555-0100."),
    ("phone-intl", "Ring me on +44 20 7946 0958 or +7 (912) 345-67-89 tomorrow"),
    ("phone-bare-10-digits", "Call me back: 4155550100"),
    ("dates-times", "Your appointment is on 2024-05-01 at 12:30. Reply C to confirm."),
    ("date-us-time-pm", "Meeting moved to 05/01/2024 at 9:45 PM. See you then!"),
    ("amounts-dotted-date", "Your payment of $12.50 was received on 1.5.2024. Balance: 1,000 USD."),
    ("amounts", "You spent €5 at Starbucks. Available: 100 USD."),
    ("amounts-currency-after", "You received 2500 USD from John. Charged 1500€ to your card."),
    ("iban", "Überweisung an DE89 3704 0044 0532 0130 00 ausgeführt."),
    ("amount-currency-first", "Pay $ 1500 or INR 2500 now"),
    ("year-alone", "Happy new year 2024! See you soon."),
    ("order-and-url", "Your order 12345678 has shipped. Track it at https://track.example.com/123456"),
    ("order-id-chain", "Order #402-1234567-1234567 has shipped."),
    ("short-code", "Reply STOP to 12345 to unsubscribe."),
    ("chat", "Hi! Are we still on for lunch tomorrow at 1pm?"),
    ("code-word-without-code", "Your verification code expires in 10 minutes."),
    ("long-duration", "Your verification code is valid for 1440 minutes."),
    ("address", "Please call 415 555 0100 or visit 1234 Main St."),
    ("uk-phone", "Call 0800 555 0199 now"),
    ("balance", "Your balance is 1234"),
    ("promo", "Promo: use code SAVE20 for 20% off!"),
    ("zh-order", "订单号：12345678 已发货"),
    ("percent", "Battery at 100%"),
    ("masked-card", "Card ****1234 was charged. Account XX5678."),
    ("email", "Write to support1234@example.com"),
    ("empty", ""),
]


@pytest.mark.parametrize(
    ("service", "text", "expected"),
    [pytest.param(service, text, expected, id=case_id) for case_id, service, text, expected in REAL_SMS],
)
def test_extracts_code_from_real_sms(service: str | None, text: str, expected: str) -> None:
    assert extract_code(text, service) == expected


@pytest.mark.parametrize("text", [pytest.param(text, id=case_id) for case_id, text in NO_CODE])
def test_text_without_code_gives_none(text: str) -> None:
    assert extract_code(text) is None


def test_corpus_is_large_and_multilingual() -> None:
    assert len(REAL_SMS) >= 45
    assert len({case_id.split("-")[0] for case_id, *_ in REAL_SMS}) >= 25


# --- provider code ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider_code", "expected"),
    [
        ("123456", "123456"),
        ("  123456\n", "123456"),
        ("123-456", "123-456"),  # kept as the provider gave it
        ("AB12CD", "AB12CD"),
        ("F7K2X", "F7K2X"),
        ("123", "123"),
        ("1234567890", "1234567890"),
    ],
)
def test_plausible_provider_code_wins(provider_code: str, expected: str) -> None:
    assert extract_code("Your code is 999999", provider_code=provider_code) == expected


@pytest.mark.parametrize(
    "provider_code",
    ["", "   ", "12", "12345678901", "null", "None", "undefined", "12 34 56", "12_34", "код1"],
)
def test_implausible_provider_code_falls_back_to_text(provider_code: str) -> None:
    assert extract_code("Your code is 999999", provider_code=provider_code) == "999999"


def test_provider_code_used_even_without_text() -> None:
    assert extract_code("", provider_code="4821") == "4821"


# --- services ---------------------------------------------------------------------------------------------


def test_service_pattern_skips_phone_numbers() -> None:
    text = "Call 415 555 0100 for help. Use 384 219 to verify your Instagram account."
    assert extract_code(text, "instagram") == "384219"


def test_service_pattern_that_does_not_match_falls_back_to_general_rules() -> None:
    assert extract_code("Your WhatsApp code is 123456", "whatsapp") == "123456"
    assert extract_code("Your Google code is 445566", "google") == "445566"


@pytest.mark.parametrize("service", ["", "unknown-service", "Some Bank", "x", "X", "Twitter"])
def test_any_service_slug_is_accepted(service: str) -> None:
    assert extract_code("Your code is 5521", service) == "5521"


def test_service_slug_is_normalised() -> None:
    assert extract_code("FB-47291 is your confirmation code", "Facebook") == "47291"
    assert extract_code("FB-47291 is your confirmation code", "fb") == "47291"


# --- robustness -------------------------------------------------------------------------------------------


def test_earlier_code_wins_a_tie() -> None:
    assert extract_code("Code: 1111. Backup code: 2222") == "1111"


def test_keyword_adjacent_number_beats_a_lone_one() -> None:
    assert extract_code("Ref 5566 7788. Your code: 4321") == "4321"


def test_alphanumeric_token_needs_a_keyword() -> None:
    assert extract_code("Your parcel AB12CD arrives today") is None


def test_groups_on_separate_lines_are_not_joined() -> None:
    assert extract_code("Code: 123\n456") == "123"


def test_mixed_case_hash_is_not_a_code() -> None:
    assert extract_code(f"Your code: {WHATSAPP_HASH}") is None


@pytest.mark.parametrize(
    "text",
    ["1" * 20_000, "1-" * 10_000, "1 " * 10_000, "code 1234 " * 2_000, "a" * 20_000 + " 1 @", "+1 " * 5_000],
)
def test_pathological_input_stays_fast(text: str) -> None:
    started = time.perf_counter()
    extract_code(text)
    mask_codes_and_numbers(text[:5_000])
    assert time.perf_counter() - started < 2.0


def test_typical_sms_is_fast() -> None:
    texts = [text for _, _, text, _ in REAL_SMS]
    for text in texts:  # warm up
        extract_code(text)
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        for text in texts:
            extract_code(text)
    per_call = (time.perf_counter() - started) / (rounds * len(texts))
    # The target is well under 50 µs; the bound is loose so slow CI machines do not flake.
    assert per_call < 500e-6


# --- masking ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Your code is 482913.", "Your code is [CODE]."),
        ("G-582913 is your Google verification code.", "[CODE] is your Google verification code."),
        ("Your WhatsApp code: 123-456", "Your WhatsApp code: [CODE]"),
        (
            "Your code is 123456. Call (415) 555-0100 with questions.",
            "Your code is [CODE]. Call [PHONE] with questions.",
        ),
        ("Text me at 415-555-0100 or +14155550100", "Text me at [PHONE] or [PHONE]"),
        ("Ring +44 20 7946 0958", "Ring [PHONE]"),
        ("Call +99912345678", "Call [PHONE]"),  # E.164-looking even though not a valid number
        (
            "Telegram code: 52719\nhttps://t.me/login/52719",
            "Telegram code: [CODE]\nhttps://t.me/login/[CODE]",
        ),
        ("Code 1111, backup code 2222", "Code [CODE], backup code [CODE]"),
        ("Your code is 449102.\n\n@example.com #449102", "Your code is [CODE].\n\n@example.com #[CODE]"),
        ("رمز التحقق الخاص بك هو ٥٨٢٠٣٩", "رمز التحقق الخاص بك هو [CODE]"),
        ("您的验证码是837261，5分钟内有效", "您的验证码是[CODE]，5分钟内有效"),
    ],
)
def test_mask_codes_and_numbers(text: str, expected: str) -> None:
    assert mask_codes_and_numbers(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, how are you?",
        "Meeting on 2024-05-01 at 12:30, bring $12.50",
        "See you in 2024",
        "Order 12345678 has shipped",
    ],
)
def test_mask_leaves_text_without_codes_or_phones_alone(text: str) -> None:
    assert mask_codes_and_numbers(text) == text


def test_mask_never_leaks_the_extracted_code() -> None:
    for _, _, text, expected in REAL_SMS:
        masked = mask_codes_and_numbers(text)
        assert "[CODE]" in masked, text
        assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(expected)}(?![0-9A-Za-z])", masked), (text, masked)
