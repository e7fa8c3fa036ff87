"""How much an SMS looks like phishing (smishing), from general signs in English and Spanish, offline.

Each sign is a family of wordings (a threat to the account, a fee to pay, a prize, a relative's "new number", a
link whose host borrows a brand's name...) with a weight; a text at or above `THRESHOLD` is phishing. The weights
were tuned on the dev half of tests/data/phishing_sms.jsonl only; `python -m core.ai.evaluate` reports both halves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

THRESHOLD = 3.0

# What the user is told about a warning: each sign belongs to one of these groups (texts in core/locales/ai_rules.py).
SignGroup = Literal["link", "pressure", "payment", "data", "lure", "impersonation"]


@dataclass(frozen=True)
class Brand:
    name: str
    mentions: re.Pattern[str]  # how a text names it
    needles: tuple[str, ...]  # what a lookalike host borrows ("usps" in usps-redelivery-help.com)
    official: frozenset[str]  # its registered domains, short links included


def _brand(name: str, mentions: str, needles: str, official: str) -> Brand:
    return Brand(name, re.compile(rf"\b(?:{mentions})\b", re.IGNORECASE), tuple(needles.split()),
                 frozenset(official.split()))


# Brands phishing most often borrows, in the US, Spain and Latin America; the domains are the brands' own.
BRANDS: tuple[Brand, ...] = (
    _brand("USPS", "usps|postal service", "usps", "usps.com"),
    _brand("FedEx", "fedex", "fedex", "fedex.com"),
    _brand("UPS", "ups", "ups", "ups.com"),
    _brand("DHL", "dhl", "dhl", "dhl.com dhl.es dhl.de"),
    _brand("Amazon", "amazon|amzn", "amazon amzn", "amazon.com amazon.es amazon.com.mx amazon.co.uk amazon.de a.co amzn.to"),
    _brand("PayPal", "paypal", "paypal", "paypal.com paypal.me"),
    _brand("Apple", "apple|apple id|icloud", "apple appleid icloud", "apple.com icloud.com"),
    _brand("Netflix", "netflix", "netflix", "netflix.com"),
    _brand("Chase", "chase", "chase", "chase.com"),
    _brand("Bank of America", "bank of america|bofa", "bankofamerica bofa", "bankofamerica.com"),
    _brand("Wells Fargo", "wells fargo", "wellsfargo", "wellsfargo.com"),
    _brand("IRS", "irs", "irs", "irs.gov"),
    _brand("Microsoft", "microsoft|office ?365|outlook", "microsoft office365 outlook",
           "microsoft.com microsoftonline.com office.com live.com outlook.com"),
    _brand("Instagram", "instagram", "instagram", "instagram.com"),
    _brand("Spotify", "spotify", "spotify", "spotify.com"),
    _brand("Coinbase", "coinbase", "coinbase", "coinbase.com"),
    _brand("Verizon", "verizon", "verizon vzw", "verizon.com vzw.com"),
    _brand("AT&T", "at&t|att", "att", "att.com"),
    _brand("T-Mobile", "t-mobile", "t-mobile tmobile", "t-mobile.com"),
    _brand("Cash App", "cash app", "cash-app cashapp", "cash.app"),
    _brand("Walmart", "walmart", "walmart", "walmart.com"),
    _brand("WhatsApp", "whatsapp", "whatsapp", "whatsapp.com whatsapp.net wa.me"),
    _brand("Google", "google", "google", "google.com google.es google.com.mx googleapis.com googleusercontent.com g.co"),
    _brand("Medicare", "medicare", "medicare", "medicare.gov"),
    _brand("DoorDash", "doordash", "doordash", "doordash.com drd.sh"),
    _brand("Correos", "correos", "correos", "correos.es"),
    _brand("SEUR", "seur", "seur", "seur.com"),
    _brand("BBVA", "bbva", "bbva", "bbva.es bbva.mx bbva.com"),
    _brand("Santander", "santander", "santander", "bancosantander.es santander.com santander.com.mx santander.co.uk santanderconsumer.es"),
    _brand("CaixaBank", "caixabank|la caixa", "caixabank", "caixabank.es"),
    _brand("Sabadell", "sabadell", "sabadell", "bancsabadell.com"),
    _brand("ING", "ing", "ing", "ing.es"),
    _brand("DGT", "dgt", "dgt", "dgt.es"),
    _brand("Agencia Tributaria", "agencia tributaria|hacienda|aeat", "agenciatributaria hacienda aeat",
           "agenciatributaria.gob.es agenciatributaria.es"),
    _brand("Seguridad Social", "seguridad social", "seg-social segsocial seguridadsocial", "seg-social.es"),
    _brand("Iberdrola", "iberdrola", "iberdrola", "iberdrola.es"),
    _brand("Endesa", "endesa", "endesa", "endesa.com"),
    _brand("Movistar", "movistar", "movistar", "movistar.es"),
    _brand("Vodafone", "vodafone", "vodafone", "vodafone.es vodafone.com"),
    _brand("Mercado Libre", "mercado ?libre", "mercadolibre", "mercadolibre.com mercadolibre.com.ar "
           "mercadolibre.com.mx"),
)

# One pass finds every brand a text names; the brand's own pattern then tells which one it was.
_ANY_BRAND = re.compile("|".join(brand.mentions.pattern for brand in BRANDS), re.IGNORECASE)

# Link shorteners anyone can use: the destination is hidden, which scams like and companies rarely need.
_SHORTENERS = frozenset(
    "bit.ly tinyurl.com t.co goo.gl is.gd ow.ly cutt.ly rb.gy tiny.cc shorturl.at s.id buff.ly rebrand.ly t.ly "
    "v.gd shorte.st bitly.com qrco.de".split()
)
# Links that open a chat with whoever made them: official domains, but no sign of who is writing.
_CHAT_LINKS = frozenset("wa.me t.me".split())
# Top-level domains that are cheap, little policed and over-represented in phishing reports.
_ODD_TLDS = frozenset(
    "xyz top club site shop click help cc info live online icu buzz rest cfd sbs support vip cyou loan work link "
    "tk ml ga cf gq".split()
)
# Recognised as hosts; a closed list keeps "today.Click" or "file.txt" from reading as links.
_TLDS = _ODD_TLDS | frozenset(
    "com net org gov edu mil io co me ly es mx ar cl pe uy br us uk de fr it pt eu ca au app dev ai to sh gl gd "
    "at id be nl ch pl ru cn in info biz store tech page sbs".split()
)
# Second-level public suffixes, so that paypal.com.ar counts as one registered domain.
_TWO_LEVEL = frozenset("co.uk org.uk gov.uk com.ar com.mx com.br com.au gob.es gob.mx com.co com.pe".split())
# Words that a made-up host strings together to look official ("secure-login", "pagos", "reembolso").
_BAIT_HOST_WORDS = re.compile(
    r"secure|security|verif|login|signin|account|update|billing|pay|pago|refund|reembolso|devolucion|seguridad|"
    r"alert|claim|reward|prize|premio|support|help|service|desbloqueo|activar|confirm|delivery|redelivery|"
    r"customs|aduana|multa|toll|peaje|puntos|clientes|parcel|envios|keep|regulariza",
    re.IGNORECASE,
)
_HOST = re.compile(
    r"(?<![\w@.-])(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,12}))(?=[/:?#\s,;)!]|\.?$|\.\s)",
    re.IGNORECASE,
)

# --- the signs ---------------------------------------------------------------------------------------------------

_Sign = tuple[str, float, SignGroup, re.Pattern[str]]


def _sign(name: str, weight: float, group: SignGroup, pattern: str) -> _Sign:
    return name, weight, group, re.compile(pattern, re.IGNORECASE)


_PHONE = r"\+?\d[\d\s().-]{7,18}\d"  # bounded: an unbounded run costs O(n²) on "1 1 1 …"
_SIGNS: tuple[_Sign, ...] = (
    _sign("threat", 2.0, "pressure",
          r"\b(account|card|membership|sim|id|service|line|cuenta|tarjeta|suministro|l[ií]nea)\b[^.!?]{0,40}?"
          r"\b(has been|have been|is|was|will be|ha sido|est[aá]|ser[aá]|fue|se cortar[aá])\s+"
          r"(temporarily |temporalmente )?(suspend|lock|block|limit|disabl|delet|cancel|deactivat|terminat|"
          r"restrict|on hold|bloquead|suspendid|desactivad|cancelad|cortad|retenid|sancionad)\w*|"
          r"\b(hemos (limitado|bloqueado|suspendido) (su|tu)|we('ve| have) (limited|locked|suspended) your|"
          r"avoid (penalties|a penalty|suspension)|ser[aá] sancionad[oa]|se cortar[aá]|evitar? (la suspensi[oó]n|el corte|el recargo|una sanci[oó]n)|"
          r"to avoid (interruption|suspension|a \$?\d+ late fee|late fees?))"),
    _sign("verify", 2.0, "data",
          r"\b(verify (your|the)? ?(identity|account|card|details|information|id)|"
          r"confirm (your|the)? ?(details|identity|id|account|information|address|data)|"
          r"update (your )?(details|billing|payment|card|information)|log ?in to (confirm|verify|update)|"
          r"secure (your account|it now)|restore access|confirm deposit info|valide (sus|tus) datos|"
          r"regularice|settle (it|your balance)|actual[ií]c[ea]la|keep your (current )?password|to unlock|"
          r"verifi(que|ca|car) (su|tu) (identidad|cuenta)|verificar su identidad|confirm[ae]s? (sus|tus) datos|"
          r"actualic?e (sus|tus) datos|actualice su m[eé]todo de pago|introduzca sus datos|acceda para|"
          r"para reactivarla|desbloqu[eé]el[oa]|para mantenerla|confirme la direcci[oó]n|no actualizar sus datos)"),
    _sign("payment", 2.0, "payment",
          r"\b(unpaid|overdue|outstanding balance|falta de pago|late fee|redelivery fee|customs (duty|fee)|duty of|(address|confirmation) fee|"
          r"requires a [$€£]?\d|pay (the|a|your|now|by|\$)|fee here|"
          r"pague|abone|pagando|pendiente de pago|tasas aduaneras|impagad[oa]|multa|no ha sido pagada|"
          r"pago de (tasas|aduanas))"),
    _sign("refund", 2.0, "lure",
          r"\b(tax refund|refund of|eligible for|you qualify|reembolso|devoluci[oó]n de|cobro duplicado|"
          r"le corresponde)"),
    _sign("prize", 2.0, "lure",
          r"\b(you('ve| have)? (won|been selected)|winner|number was (picked|drawn|selected)|monthly draw|"
          r"(ha|has) sido seleccionad[oa]|bono de \d+|claim (it|your|the)|gift card|redeem|pending reward|"
          r"free (iphone|gift|card)|has ganado|ha ganado|sorteo|premio|reclam[ae]|canj[eé]|tarjetas? regalo|"
          r"puntos que caducan)"),
    _sign("unusual", 2.0, "pressure",
          r"\b(unusual (sign.?in|activity|login)|suspicious activity|new device|withdrawal of|"
          r"acceso inusual|actividad sospechosa|nuevo dispositivo|inicio de sesi[oó]n (inusual|sospechoso))"),
    _sign("delivery_problem", 2.0, "pressure",
          r"\b((could not|couldn't|unable to) be deliver|could not deliver|is on hold|incomplete address|"
          r"schedule redelivery|release it|no ha podido ser entregad|retenid[oa] en|est[aá] retenid)"),
    _sign("job", 2.0, "lure",
          r"\b(earn \$?\d[\d,.-]*\$?\d* (per|a) (day|hour|week)|work(ing)? from home|remote (role|job|position)|"
          r"paying \$\d+\s*/\s*h|recruiting team|gana(r)? (entre )?\d+[^.]{0,15}(al|por) (d[ií]a|hora|semana)|"
          r"desde casa|trabajo remoto|[€$] la hora|recursos humanos|oferta de empleo|job offer)"),
    _sign("scam_offer", 2.0, "lure",
          r"\b(extended warranty|garant[ií]a extendida|debt relief|loan (is )?(pre-?)?approved|"
          r"pr[eé]stamo (pre)?(aprobado|concedido))"),
    _sign("relative", 1.5, "impersonation",
          r"^\W{0,5}(?:(?:hi|hey|hello|hola)\W{1,5})?(mum|mom|mam[aá]|dad|pap[aá])\b|\b(it'?s me|soy yo)\b"),
    _sign("new_number", 1.5, "impersonation",
          r"\b(new number|my number changed|n[uú]mero nuevo|nuevo n[uú]mero|cambi[eé] de n[uú]mero)\b"),
    _sign("lost_phone", 1.5, "impersonation",
          r"\b((lost|dropped|broke|smashed|damaged) my phone|phone (is )?(broken|lost)|this is my new phone|"
          r"(m[oó]vil|tel[eé]fono) de (una amiga|un amigo|otra persona)|el m[ií]o se (ha )?(roto|estropeado)|"
          r"se me (ha )?(roto|ca[ií]do|perdido|mojado) el m[oó]vil|(perd[ií]|romp[ií]) (el|mi) m[oó]vil)"),
    _sign("chat_app", 1.0, "impersonation",
          r"\b((on|via|by|por) (whatsapp|telegram|signal)|wa\.me/)"),
    _sign("emergency", 1.5, "pressure",
          r"\b(in jail|bail|accident|hospital|arrested|accidente|c[aá]rcel|fianza|detenid[oa])\b"),
    _sign("money_request", 2.0, "payment",
          r"\b(can you send (me )?([$€£]|\d|money|cash)|send (me )?[$€£]?\d|pay you back|wire (me|the)|buy [\w ]{0,20}gift cards|"
          r"me haces un bizum|hazme un bizum|(me )?(puedes|podr[ií]as) hacer una transferencia|bizum de|te lo devuelvo|compra tarjetas regalo|"
          r"(transfer|transferencia) (of|de) [$€]?\d|to accept the transfer)"),
    _sign("data_request", 2.0, "data",
          r"\b(reply with your|(text|send) (back )?your full name|full name and address|date of birth|social security|ssn|card (number|details)|datos bancarios|"
          r"datos de (su|tu) tarjeta|fecha de nacimiento|n[uú]mero de (la )?tarjeta|cvv)\b"),
    _sign("callback", 1.5, "impersonation",
          rf"\b(call|llame|llama|ll[aá]menos|contact)\b[^.?!]{{0,40}}?{_PHONE}|"
          r"\b(our agent will call you|un agente le llamar[aá]|le llamaremos)"),
    _sign("disown", 1.0, "pressure",
          r"\b(if (this wasn'?t you|you did not|you didn'?t|no\b)|if not you|si no (lo |la )?(reconoce|"
          r"reconoces)|si no ha sido usted|not you\?)"),
    _sign("secrecy", 1.5, "impersonation",
          r"\b(don'?t tell|do not tell|keep this between us|no se lo digas|no le digas|no digas nada)\b"),
    _sign("crypto", 1.0, "payment", r"\b(btc|bitcoin|crypto|usdt|ethereum)\b"),
    _sign("reply_bait", 1.0, "data", r"\b(reply (yes )?to (receive|unlock|claim|get)|responde para recibir)\b"),
    _sign("urgency", 1.0, "pressure",
          r"\b(urgent(ly)?|immediately|asap|right away|now|act now|final notice|last chance|today|tonight|"
          r"expires?|within \d+ ?h(ours)?|before it expires|urgente|inmediatamente|de inmediato|ahora|hoy|"
          r"[uú]ltimo aviso|antes de (\d+ horas|ma[nñ]ana|hoy)|pr[oó]ximas \d+ horas|caducan?)\b"),
    _sign("money", 0.5, "payment",
          r"[$€£]\s?\d|\d\s?(€|eur\b|usd\b|mxn\b|euros\b|dollars\b)|\bbtc\b"),
)
# What genuine senders write and scams avoid: a safe way back, or "nothing to do".
_MITIGATIONS: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    ("safe_advice", -2.0, re.compile(
        r"\b((never|don'?t|do not) share|no (lo |la )?compartas|no (lo )?comparta|"
        r"call the number on the back of your card|n[uú]mero que figura en (su|tu) tarjeta|"
        r"(contact|visit) your (branch|local branch)|contacte con su oficina|ac[uú]da a (su|tu) oficina|"
        r"you can ignore this|if this was you|si ha sido usted|no tiene que hacer nada|no action (is )?needed)",
        re.IGNORECASE)),
    ("in_app", -1.0, re.compile(
        r"\b((in|on|open|check|use) (the|your) ([\w&]+ ){0,2}app|in your app|en la app|desde la app)\b",
        re.IGNORECASE)),
    ("opt_out_footer", -0.5, re.compile(
        r"\b((reply|text) stop|responde baja|baja: responde)\b", re.IGNORECASE)),
)
# "Send me the code you just got": the way accounts (WhatsApp above all) are taken over.
CODE_REQUEST = re.compile(
    r"(?<!never )(?<!not )(?<!n't )(?<!no )"
    r"\b((send|share|give|forward|tell|text|read) (me |us )?(the |your |that )?(\d-digit )?"
    r"(code|pin|otp|passcode)s?\b|reply with (the |your )?(code|pin)|"
    r"(sent|texted) you a (\d-digit )?(code|pin) by (mistake|accident)|"
    r"c[oó]digo que te (lleg[oó]|mandaron|acabamos de enviar)|c[oó]digo [^.?!]{0,20}por error|"
    r"(p[aá]same|env[ií]ame|env[ií]enos|m[aá]ndame|m[aá]ndanos|dime|reenv[ií]ame) (el |los )?(c[oó]digos?|pin))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Host:
    host: str
    registered: str  # the part someone bought: paypal.resolution-center.xyz → resolution-center.xyz
    tld: str


@dataclass(frozen=True)
class Verdict:
    """The score and what it rests on; `brand` is the company the text names or borrows, if any."""

    score: float
    signs: tuple[str, ...]
    groups: tuple[SignGroup, ...]
    code_request: bool
    brand: str | None
    hosts: tuple[Host, ...] = field(default=())

    @property
    def is_phishing(self) -> bool:
        return self.code_request or self.score >= THRESHOLD


def find_hosts(text: str) -> list[Host]:
    hosts = []
    for match in _HOST.finditer(text):
        host, tld = match.group(1).lower(), match.group(2).lower()
        if tld not in _TLDS:
            continue
        labels = host.split(".")
        keep = 3 if ".".join(labels[-2:]) in _TWO_LEVEL and len(labels) > 2 else 2
        hosts.append(Host(host, ".".join(labels[-keep:]), tld))
    return hosts


def _close(token: str, needle: str) -> bool:
    """Equal, or one letter off for longer brand names ("fedx", "paypa1"): typosquatting."""
    if token == needle:
        return True
    if len(needle) < 5 or abs(len(token) - len(needle)) > 1:
        return False
    if len(token) == len(needle):
        return sum(a != b for a, b in zip(token, needle, strict=True)) == 1
    short, long = sorted((token, needle), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def borrowed_brand(host: Host) -> Brand | None:
    """The brand whose name a host carries while not being one of its domains (a lookalike), else None."""
    if _official(host):
        return None
    tokens = re.split(r"[.-]", host.host)
    for brand in BRANDS:
        for needle in brand.needles:
            if "-" in needle or len(needle) >= 6:
                if needle in host.host:
                    return brand
            elif any(_close(token, needle) for token in tokens):
                return brand
    return None


def _official(host: Host) -> bool:
    return any(host.registered in brand.official for brand in BRANDS)


def assess(text: str) -> Verdict:
    """How phishing-like `text` is; cheap (a few dozen regex passes) and never raises on odd input."""
    score = 0.0
    signs: list[str] = []
    groups: list[SignGroup] = []

    def add(name: str, weight: float, group: SignGroup | None) -> None:
        nonlocal score
        score += weight
        signs.append(name)
        if group is not None and group not in groups:
            groups.append(group)

    hosts = find_hosts(text)
    mention = _ANY_BRAND.search(text)
    named = next((brand for brand in BRANDS if brand.mentions.fullmatch(mention.group(0))), None) if mention else None
    borrowed = None
    if hosts:
        add("link", 1.0, None)
        for host in hosts:
            borrowed = borrowed or borrowed_brand(host)
        if borrowed is not None:
            add("lookalike_host", 3.0, "link")
        if any(host.registered in _SHORTENERS for host in hosts):
            add("shortener", 1.5, "link")
        if any(host.tld in _ODD_TLDS for host in hosts):
            add("odd_tld", 1.5, "link")
        strangers = [host for host in hosts if not _official(host) and host.registered not in _SHORTENERS]
        if any("-" in host.host and _BAIT_HOST_WORDS.search(host.host) for host in strangers):
            add("bait_host", 1.0, "link")
        if named is not None and borrowed is None and strangers:
            add("unofficial_link", 1.0, "link")
        if all(_official(host) and host.registered not in _CHAT_LINKS for host in hosts):
            add("official_link", -1.5, None)
    for name, weight, group, pattern in _SIGNS:
        if pattern.search(text):
            add(name, weight, group)
    for name, weight, pattern in _MITIGATIONS:
        if pattern.search(text):
            add(name, weight, None)
    code_request = bool(CODE_REQUEST.search(text))
    if code_request and "data" not in groups:
        groups.append("data")
    brand = borrowed or named
    return Verdict(round(score, 2), tuple(signs), tuple(groups), code_request, brand.name if brand else None,
                   tuple(hosts))
