// CumApp Mini App: signs in (Telegram initData or a one-time link), then reads and acts through /api/v1 with the
// session cookie and follows /api/v1/events live. No framework: a small h() helper builds DOM nodes, and text is
// always set as text (never parsed as HTML).

const $ = (id) => document.getElementById(id);
const tg = () => (window.Telegram && window.Telegram.WebApp) || null;
const APP_HEADER = { "X-CumApp-App": "1" };
const STATE_WORDS = {
  queued: "sending", accepted: "sending", sending: "sending", sent: "sent", delivered: "delivered",
  undelivered: "failed", failed: "failed", received: "received",
};
const VF_WORDS = {
  requested: "waiting for a number", active: "waiting for the code", code_received: "code received",
  completed: "completed", cancelled: "cancelled", expired: "expired", failed: "failed",
};
const OPEN_VF = new Set(["requested", "active"]);

const state = {
  page: "dashboard", account: null, numbers: [], conversation: null, lastEventId: null,
  messageStates: new Map(), quote: null, signedIn: false,
};

// --- small helpers ----------------------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Money as the chat writes it: $1,234.56 and -$2.50. */
export function money(cents) {
  const sign = cents < 0 ? "-" : "";
  const abs = Math.abs(cents);
  return `${sign}$${Math.floor(abs / 100).toLocaleString("en-US")}.${String(abs % 100).padStart(2, "0")}`;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const today = new Date().toISOString().slice(0, 10);
  const day = date.toISOString().slice(0, 10);
  return day === today ? date.toISOString().slice(11, 16) + " UTC" : day;
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function say(text, error = false) {
  const line = $("status");
  line.textContent = text;
  line.classList.toggle("error", error);
}

function empty(list, text) {
  list.replaceChildren(h("li", { class: "empty" }, text));
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body, idempotencyKey) {
  const headers = { ...APP_HEADER };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    showSignIn();
    throw new ApiError(401, "Please sign in again: send /app in the chat.");
  }
  const data = response.status === 204 || response.status === 202 && !response.headers.get("content-type")
    ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, (data && (data.detail || data.title)) || `Error ${response.status}`);
  return data;
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) return;
  say(error.message || String(error), true);
}

// --- Telegram: sign-in data, theme and viewport -----------------------------------------------------------------

function launchParams() {
  // Telegram opens the app with #tgWebAppData=…&tgWebAppThemeParams=…; telegram-web-app.js reads the same.
  const params = new URLSearchParams(location.hash.slice(1));
  const webApp = tg();
  let theme = webApp && webApp.themeParams && Object.keys(webApp.themeParams).length ? webApp.themeParams : null;
  if (!theme && params.get("tgWebAppThemeParams")) {
    try { theme = JSON.parse(params.get("tgWebAppThemeParams")); } catch { theme = null; }
  }
  return { initData: (webApp && webApp.initData) || params.get("tgWebAppData") || "", theme };
}

const THEME_VARS = {
  bg_color: "--tg-bg", secondary_bg_color: "--tg-secondary-bg", text_color: "--tg-text", hint_color: "--tg-hint",
  link_color: "--tg-link", button_color: "--tg-button", button_text_color: "--tg-button-text",
  destructive_text_color: "--tg-destructive",
};

function isDark(hex) {
  const match = /^#?([0-9a-f]{6})$/i.exec(hex || "");
  if (!match) return false;
  const n = parseInt(match[1], 16);
  return (0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255)) < 128;
}

function applyTheme(theme) {
  if (!theme) return;
  const root = document.documentElement;
  for (const [key, name] of Object.entries(THEME_VARS)) {
    if (typeof theme[key] === "string" && /^#[0-9a-f]{3,8}$/i.test(theme[key])) root.style.setProperty(name, theme[key]);
  }
  if (theme.bg_color) root.dataset.theme = isDark(theme.bg_color) ? "dark" : "light";
}

function hookTelegram() {
  const webApp = tg();
  if (!webApp || hookTelegram.done) return;
  hookTelegram.done = true;
  webApp.ready();
  webApp.expand();
  applyTheme(webApp.themeParams);
  webApp.onEvent("themeChanged", () => applyTheme(webApp.themeParams));
}

async function signIn() {
  const { initData, theme } = launchParams();
  applyTheme(theme);
  const login = new URLSearchParams(location.search).get("login");
  if (login) history.replaceState(null, "", location.pathname + location.hash);  // a used link is not kept
  const body = initData ? { init_data: initData } : login ? { login } : null;
  if (!body) return true;  // perhaps a session from before
  const response = await fetch("/app/session", {
    method: "POST", credentials: "same-origin", headers: { ...APP_HEADER, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.status === 204;
}

function showSignIn() {
  state.signedIn = false;
  show("signin");
}

// --- pages ------------------------------------------------------------------------------------------------------

const PAGES = ["dashboard", "verify", "numbers", "inbox", "conversation", "signin"];
const LOADERS = { dashboard: loadDashboard, verify: loadVerify, numbers: loadNumbers, inbox: loadInbox };

function show(page) {
  state.page = page;
  for (const name of PAGES) $(`page-${name}`).hidden = name !== page;
  const tab = page === "conversation" ? "inbox" : page;
  for (const link of document.querySelectorAll(".bar a")) {
    if (link.dataset.page === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  say("");
  hideMainButton();
  if (state.signedIn && LOADERS[page]) LOADERS[page]().catch(failed);
}

function go(page) {
  show(page);
  $("main").focus({ preventScroll: true });
}

// Dashboard --------------------------------------------------------------------------------------------------------

async function loadAccount() {
  const account = await api("GET", "/api/v1/account");
  state.account = account;
  $("available").replaceChildren("Available: ", h("span", { class: "money" }, money(account.available_cents)));
  $("held").textContent = money(account.held_cents);
  $("tier").textContent = account.tier;
  return account;
}

async function loadDashboard() {
  const [, verifications, messages] = await Promise.all([
    loadAccount(), api("GET", "/api/v1/verifications"), api("GET", "/api/v1/messages?limit=20"),
  ]);
  requestAnimationFrame(() => performance.mark("dashboard-ready"));
  const today = new Date().toISOString().slice(0, 10);
  const vToday = verifications.data.filter((v) => v.created_at.slice(0, 10) === today).length;
  const sToday = messages.data.filter((m) => m.direction === "outbound" && m.created_at.slice(0, 10) === today).length;
  $("today").textContent = `${vToday} ${vToday === 1 ? "verification" : "verifications"}, ${sToday} SMS sent`;
  const items = [
    ...verifications.data.slice(0, 8).map((v) => ({
      at: v.created_at, text: `Verification ${v.service}${v.code ? ` · code ${v.code}` : ""}`,
      meta: `${money(v.price_cents)} · ${VF_WORDS[v.state] || v.state}`,
    })),
    ...messages.data.slice(0, 8).map((m) => ({
      at: m.created_at, text: m.direction === "inbound" ? `SMS from ${m.from}` : `SMS to ${m.to}`,
      meta: m.direction === "inbound" ? "received" : STATE_WORDS[m.state] || m.state,
    })),
  ].sort((a, b) => b.at.localeCompare(a.at)).slice(0, 8);
  const list = $("activity");
  if (!items.length) {
    empty(list, "Nothing yet. Verify a service under Verify, or buy a number under Numbers.");
    return;
  }
  list.replaceChildren(...items.map((item) => h("li", {},
    h("span", { class: "grow" }, item.text, h("br"), h("span", { class: "meta" }, item.meta)),
    h("span", { class: "meta" }, when(item.at)))));
}

// Verifications ---------------------------------------------------------------------------------------------------

let searchTimer = null;
let searchSeq = 0;

async function loadServices(search) {
  const seq = ++searchSeq;
  const query = search ? `?search=${encodeURIComponent(search)}` : "";
  const found = await api("GET", `/api/v1/services${query}`);
  if (seq !== searchSeq) return;  // an older answer arriving after a newer one
  const list = $("services");
  if (!found.data.length) {
    empty(list, `No service matches “${search}”. Try another name, e.g. whats or telegram.`);
    return;
  }
  list.replaceChildren(...found.data.map((service) => h("li", {},
    h("button", { type: "button", onclick: () => showQuote(service) },
      h("span", {}, service.name), h("span", { class: "meta money" }, money(service.price_cents))))));
}

function showQuote(service) {
  state.quote = { service, key: randomKey() };
  const card = $("quote");
  const available = state.account ? ` Available: ${money(state.account.available_cents)}.` : "";
  card.replaceChildren(
    h("p", {}, h("strong", {}, service.name), ` — a number for its code, ${money(service.price_cents)}.${available}`),
    h("p", { class: "meta" }, "You pay only if the code comes; otherwise the money is released."),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: confirmQuote }, "Confirm"),
      h("button", { type: "button", onclick: hideQuote }, "Cancel")),
  );
  card.hidden = false;
  showMainButton("Confirm", confirmQuote);
  card.querySelector("button").focus();
}

function hideQuote() {
  state.quote = null;
  $("quote").hidden = true;
  hideMainButton();
}

async function confirmQuote() {
  const quote = state.quote;
  if (!quote) return;
  for (const button of $("quote").querySelectorAll("button")) button.disabled = true;
  try {
    const verification = await api("POST", "/api/v1/verifications", { service: quote.service.id }, quote.key);
    hideQuote();
    say(`Bought: ${verification.number || "a number"} for ${quote.service.name}. The code appears here.`);
    upsertVerification(verification, true);
    loadAccount().catch(failed);
  } catch (error) {
    for (const button of $("quote").querySelectorAll("button")) button.disabled = false;
    failed(error);
  }
}

function verificationItem(v) {
  const code = v.code
    ? h("span", {}, h("span", { class: "code", "aria-label": `Code ${v.code}` }, v.code), " ",
      h("button", { type: "button", onclick: () => copy(v.code) }, "Copy"))
    : null;
  return h("li", { "data-vid": v.id },
    h("span", { class: "grow" }, h("strong", {}, v.service), " ", h("span", { class: "num" }, v.number || ""), h("br"),
      h("span", { class: "state" }, `${VF_WORDS[v.state] || v.state} · ${money(v.price_cents)}`)),
    code,
    OPEN_VF.has(v.state) && !v.code
      ? h("button", { type: "button", class: "danger", onclick: () => cancelVerification(v.id) }, "Cancel") : null);
}

function upsertVerification(v, first = false) {
  const list = $("verifications");
  const old = list.querySelector(`[data-vid="${CSS.escape(v.id)}"]`);
  const item = verificationItem(v);
  if (old) old.replaceWith(item);
  else if (first || !list.querySelector("[data-vid]")) {
    list.querySelector(".empty")?.remove();
    list.prepend(item);
  }
}

async function cancelVerification(id) {
  try {
    upsertVerification(await api("POST", `/api/v1/verifications/${id}/cancel`));
    say("Cancelled: the money is released.");
    loadAccount().catch(failed);
  } catch (error) {
    failed(error);
  }
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    say("Copied.");
  } catch {
    say(`Copy it by hand: ${text}`);
  }
}

async function loadVerify() {
  const [list] = await Promise.all([api("GET", "/api/v1/verifications"), loadAccount(),
    loadServices($("search").value.trim())]);
  const items = $("verifications");
  if (!list.data.length) empty(items, "No verifications yet. Search a service above and press Confirm.");
  else items.replaceChildren(...list.data.slice(0, 20).map((v) => verificationItem(v)));
}

// Numbers ----------------------------------------------------------------------------------------------------------

function resetBuy() {
  $("buy-step").replaceChildren(h("button", { id: "buy", type: "button", class: "primary", onclick: askBuy }, "Buy"));
  hideMainButton();
}

function askBuy() {
  const key = randomKey();
  const available = state.account ? ` Available: ${money(state.account.available_cents)}.` : "";
  const confirm = async (event) => {
    event?.target && (event.target.disabled = true);
    try {
      const number = await api("POST", "/api/v1/numbers", { country: "US" }, key);
      say(`Bought ${number.number}: ${money(number.monthly_price_cents)} a month.`);
      resetBuy();
      await loadNumbers();
    } catch (error) {
      if (event?.target) event.target.disabled = false;
      failed(error);
    }
  };
  $("buy-step").replaceChildren(
    h("p", {}, `Buy a United States number? The first month is paid now.${available}`),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: confirm }, "Confirm"),
      h("button", { type: "button", onclick: resetBuy }, "Cancel")));
  showMainButton("Confirm", confirm);
}

const DAY_MS = 86400000;
const PERIOD_DAYS = 30;  // a rental month (core.messaging.numbers.NUMBER_PERIOD)
const GRACE_DAYS = 7;  // an unpaid number is kept this long, then released (core.messaging.renewals.GRACE)

function dayOf(iso, plusDays = 0) {
  return new Date(Date.parse(iso) + plusDays * DAY_MS).toISOString().slice(0, 10);
}

/** When the number renews, as the chat's number screen says it. */
function rentalLine(number) {
  if (!number.renews_at) return "";
  const date = dayOf(number.renews_at);
  if (Date.parse(number.renews_at) <= Date.now()) {
    return `Unpaid since ${date}: renew by ${dayOf(number.renews_at, GRACE_DAYS)} or it is released`;
  }
  return number.auto_renew ? `Renews ${date}` : `Paid until ${date}; Auto-renew is off`;
}

/** Renew now is offered for the next month only (the server refuses paying further ahead). */
function renewable(number) {
  return Boolean(number.renews_at) && Date.parse(number.renews_at) - Date.now() <= PERIOD_DAYS * DAY_MS;
}

function numberItem(number) {
  const toggle = h("input", { type: "checkbox", role: "switch", checked: number.auto_renew,
    onchange: (event) => setAutoRenew(number, event.target) });
  const item = h("li", { "data-nid": number.id },
    h("span", { class: "grow" }, h("strong", { class: "num" }, number.number), h("br"),
      h("span", { class: "meta" }, `${money(number.monthly_price_cents)} a month`), h("br"),
      h("span", { class: "meta renews" }, rentalLine(number))),
    h("span", { class: "actions" },
      number.renews_at ? h("label", { class: "switch" }, toggle, "Auto-renew") : null,
      renewable(number)
        ? h("button", { type: "button", class: "primary", onclick: () => askRenew(item, number) }, "Renew now") : null,
      h("button", { type: "button", class: "danger", onclick: () => askRelease(item, number) }, "Release")));
  return item;
}

async function setAutoRenew(number, toggle) {
  const wanted = toggle.checked;
  toggle.disabled = true;
  try {
    const updated = await api("PATCH", `/api/v1/numbers/${number.id}`, { auto_renew: wanted });
    Object.assign(number, updated);
    toggle.closest("li").querySelector(".renews").textContent = rentalLine(number);
    say(updated.auto_renew ? `Auto-renew on for ${number.number}.`
      : `Auto-renew off for ${number.number}: it is released ${GRACE_DAYS} days after ${dayOf(number.renews_at)} unless you renew it.`);
  } catch (error) {
    toggle.checked = !wanted;
    failed(error);
  } finally {
    toggle.disabled = false;
  }
}

function askRenew(item, number) {
  // One key and the renewal date shown: pressed twice (or retried), the month is paid once.
  const key = randomKey();
  const available = state.account ? ` Available: ${money(state.account.available_cents)}.` : "";
  const confirm = async (event) => {
    event?.target && (event.target.disabled = true);
    try {
      const renewed = await api("POST", `/api/v1/numbers/${number.id}/renew`, { renews_at: number.renews_at }, key);
      say(`Renewed ${number.number}: it now renews ${dayOf(renewed.renews_at)}.`);
      hideMainButton();
      await loadNumbers();
    } catch (error) {
      if (event?.target) event.target.disabled = false;
      failed(error);
    }
  };
  const cancel = () => {
    hideMainButton();
    item.replaceWith(numberItem(number));
  };
  item.replaceChildren(
    h("span", { class: "grow" }, `Renew ${number.number} now for ${money(number.monthly_price_cents)}? ` +
      `It then renews ${dayOf(number.renews_at, PERIOD_DAYS)}.${available}`),
    h("span", { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: confirm }, "Confirm"),
      h("button", { type: "button", onclick: cancel }, "Cancel")));
  showMainButton("Confirm", confirm);
  item.querySelector("button").focus();
}

function askRelease(item, number) {
  item.replaceChildren(
    h("span", { class: "grow" }, `Release ${number.number}? The month paid is not refunded.`),
    h("span", { class: "actions" },
      h("button", { type: "button", class: "danger", onclick: async () => {
        try {
          await api("DELETE", `/api/v1/numbers/${number.id}`);
          say(`Released ${number.number}.`);
          await loadNumbers();
        } catch (error) { failed(error); }
      } }, "Confirm"),
      h("button", { type: "button", onclick: () => item.replaceWith(numberItem(number)) }, "Cancel")));
}

async function loadNumbers() {
  const [numbers] = await Promise.all([api("GET", "/api/v1/numbers"), loadAccount()]);
  state.numbers = numbers.data;
  const list = $("numbers");
  if (!numbers.data.length) empty(list, "No numbers yet. Press Buy above to get one.");
  else list.replaceChildren(...numbers.data.map(numberItem));
}

// Inbox and conversation ---------------------------------------------------------------------------------------------

async function loadInbox() {
  const [conversations, numbers] = await Promise.all([api("GET", "/api/v1/conversations"), api("GET", "/api/v1/numbers")]);
  state.numbers = numbers.data;
  const list = $("conversations");
  if (!conversations.data.length) {
    empty(list, numbers.data.length
      ? `No texts yet. Texts to ${numbers.data.map((n) => n.number).join(", ")} appear here as they arrive.`
      : "No conversations yet. Buy a number under Numbers; texts to it appear here.");
    return;
  }
  list.replaceChildren(...conversations.data.map((c) => h("li", {},
    h("button", { type: "button", class: "grow", onclick: () => openConversation(c.number, c.peer),
      "aria-label": `${c.peer}, to ${c.number}${c.unread_count ? `, ${c.unread_count} unread` : ""}` },
      h("span", { class: "num" }, c.peer), h("span", { class: "meta" }, `to ${c.number}`)),
    c.unread_count ? h("span", { class: "meta" }, `${c.unread_count} unread`) : null,
    h("span", { class: "meta" }, when(c.last_message_at)))));
}

function messageItem(m) {
  const stateWord = m.direction === "inbound" ? "received"
    : STATE_WORDS[state.messageStates.get(m.id) || m.state] || m.state;
  return h("li", { class: m.direction, "data-mid": m.id },
    h("span", { class: "text" }, m.text), h("br"),
    h("span", { class: "state" }, `${when(m.created_at)} · `, h("span", { class: "word" }, stateWord)));
}

async function openConversation(number, peer) {
  state.conversation = { number, peer };
  $("h-conversation").textContent = peer;
  go("conversation");
  const list = $("messages");
  list.replaceChildren(h("li", { class: "empty" }, "Loading…"));
  try {
    const found = await api("GET",
      `/api/v1/messages?number=${encodeURIComponent(number)}&peer=${encodeURIComponent(peer)}&limit=50`);
    if (!found.data.length) empty(list, "No messages yet. Type a message below and press Send.");
    else list.replaceChildren(...found.data.reverse().map(messageItem));
    list.lastElementChild?.scrollIntoView({ block: "end" });
  } catch (error) {
    failed(error);
  }
}

function appendMessage(m) {
  const list = $("messages");
  if (list.querySelector(`[data-mid="${CSS.escape(m.id)}"]`)) return;
  list.querySelector(".empty")?.remove();
  list.append(messageItem(m));
  list.lastElementChild.scrollIntoView({ block: "end" });
}

async function sendMessage(event) {
  event.preventDefault();
  const box = $("message");
  const text = box.value.trim();
  const conversation = state.conversation;
  if (!text || !conversation) return;
  const button = $("send-form").querySelector("button");
  button.disabled = true;
  try {
    const sent = await api("POST", "/api/v1/messages", { from: conversation.number, to: conversation.peer, text },
      box.dataset.key || (box.dataset.key = randomKey()));
    box.value = "";
    delete box.dataset.key;
    appendMessage({ id: sent.id, direction: "outbound", text, state: sent.state, created_at: new Date().toISOString() });
  } catch (error) {
    failed(error);
  } finally {
    button.disabled = false;
  }
}

// Telegram's MainButton carries the primary action where there is one -----------------------------------------------

let mainAction = null;

function showMainButton(text, action) {
  const button = tg() && tg().MainButton;
  if (!button) return;
  hideMainButton();
  mainAction = () => action();
  button.setText(text);
  button.onClick(mainAction);
  button.show();
}

function hideMainButton() {
  const button = tg() && tg().MainButton;
  if (!button || !mainAction) return;
  button.offClick(mainAction);
  button.hide();
  mainAction = null;
}

// Live events ------------------------------------------------------------------------------------------------------

let socketDelay = 1000;

function connectEvents() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const after = state.lastEventId ? `?after=${state.lastEventId}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/events${after}`);
  socket.onopen = () => { socketDelay = 1000; document.body.dataset.live = "1"; };
  socket.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    if (!event.id) return;
    state.lastEventId = event.id;
    onEvent(event);
  };
  socket.onclose = () => {
    delete document.body.dataset.live;
    if (!state.signedIn) return;
    setTimeout(connectEvents, socketDelay);
    socketDelay = Math.min(socketDelay * 2, 15000);
  };
}

function onEvent(event) {
  const data = event.data || {};
  if (event.type === "verification.code" || event.type === "verification.closed") {
    const item = $("verifications").querySelector(`[data-vid="${CSS.escape(data.verification_id)}"]`);
    if (item) {
      api("GET", `/api/v1/verifications/${data.verification_id}`).then((v) => upsertVerification(v)).catch(failed);
      if (event.type === "verification.code") {
        // Show the code at once; the full row follows.
        const fresh = verificationItem({ id: data.verification_id, service: data.service, number: data.number,
          state: "code_received", code: data.code, price_cents: 0 });
        item.replaceWith(fresh);
      }
    }
    if (event.type === "verification.code") say(`Code for ${data.service}: ${data.code}`);
    if (state.page === "dashboard") loadDashboard().catch(failed);
    else loadAccount().catch(() => {});
  } else if (event.type === "message.received") {
    const open = state.conversation;
    if (state.page === "conversation" && open && open.peer === data.from && open.number === data.to) {
      appendMessage({ id: data.message_id, direction: "inbound", text: data.text, state: "received",
        created_at: data.received_at });
    }
    if (state.page === "inbox") loadInbox().catch(failed);
    if (state.page === "dashboard") loadDashboard().catch(failed);
  } else if (event.type === "message.status") {
    state.messageStates.set(data.message_id, data.state);
    const word = document.querySelector(`#messages [data-mid="${CSS.escape(data.message_id)}"] .word`);
    if (word) word.textContent = STATE_WORDS[data.state] || data.state;
  }
}

// Start -----------------------------------------------------------------------------------------------------------

function wire() {
  for (const link of document.querySelectorAll("a[href^='#']")) {
    const page = link.dataset.page || link.getAttribute("href").slice(1);
    if (!PAGES.includes(page)) continue;
    // Pages change without touching the URL: Telegram keeps its launch data in the fragment.
    link.addEventListener("click", (event) => { event.preventDefault(); go(page); });
  }
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadServices($("search").value.trim()).catch(failed);
  });
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadServices($("search").value.trim()).catch(failed), 250);
  });
  $("buy").addEventListener("click", askBuy);
  $("send-form").addEventListener("submit", sendMessage);
  // Telegram's own script, only when Telegram opened the page (its launch data is in the fragment): a plain
  // browser loads nothing from outside this server.
  if (new URLSearchParams(location.hash.slice(1)).has("tgWebAppData") || window.TelegramWebviewProxy) {
    const script = h("script", { src: "https://telegram.org/js/telegram-web-app.js", async: true });
    script.addEventListener("load", hookTelegram);
    document.head.append(script);
  }
}

async function start() {
  wire();
  let ok = false;
  try {
    ok = await signIn();
  } catch {
    ok = false;
  }
  if (!ok) {
    showSignIn();
    return;
  }
  state.signedIn = true;
  const first = new URLSearchParams(location.hash.slice(1)).has("tgWebAppData") ? "dashboard"
    : PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "dashboard";
  show(first);
  if (state.signedIn) connectEvents();
}

start();
