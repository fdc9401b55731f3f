/* nlweb-local: the API key a page sends when auth is on — the chat page (/) and the dashboard (/dashboard).

   The key is typed into a key field (shown at the first 401, or by the "API key" button), kept in this
   tab's sessionStorage (gone when the tab closes; never in localStorage or a cookie) and sent as
   `Authorization: Bearer <key>` on every request the page makes through `nlwebAuth.fetch` — plain
   requests and the /ask event stream alike (a fetch-read stream: EventSource cannot send a header).
   A page registers what to run again once a key is entered: `nlwebAuth.onKey(fn)`.
   Plain JS, no dependencies; the styles are inline so that both pages can use it. */
(function () {
  "use strict";
  const STORE = "nlweb-local.api-key";
  const listeners = [];
  let form = null;

  function stored() {
    try {
      return sessionStorage.getItem(STORE);
    } catch (_) {
      return null;
    }
  }

  function keep(key) {
    try {
      if (key) sessionStorage.setItem(STORE, key);
      else sessionStorage.removeItem(STORE);
    } catch (_) {
      /* storage refused (private mode): the key lasts as long as the page */
    }
    memory = key || null;
  }
  let memory = stored();

  function current() {
    return stored() || memory;
  }

  function build() {
    if (form) return form;
    form = document.createElement("form");
    form.id = "api-key-form";
    form.hidden = true;
    form.setAttribute("autocomplete", "off");
    form.style.cssText = "display:none;flex-wrap:wrap;align-items:center;gap:8px;padding:10px 16px;" +
      "background:var(--warn-soft,#fff5e0);color:var(--text,#1c2230);border-bottom:1px solid var(--border,#e1e4ee);" +
      "font:14px/1.4 system-ui,sans-serif;position:relative;z-index:20";
    const label = document.createElement("label");
    label.htmlFor = "api-key";
    label.textContent = "API key";
    label.style.fontWeight = "600";
    const input = document.createElement("input");
    input.id = "api-key";
    input.name = "api-key";
    input.type = "password";
    input.placeholder = "nlk_…";
    input.spellcheck = false;
    input.style.cssText = "flex:1 1 260px;min-width:180px;padding:6px 8px;font:inherit;border:1px solid var(--border,#ccd);" +
      "border-radius:8px;background:var(--surface,#fff);color:inherit";
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Use key";
    button.style.cssText = "padding:6px 12px;font:inherit;border-radius:8px;border:1px solid var(--accent,#3b5bdb);" +
      "background:var(--accent,#3b5bdb);color:var(--accent-text,#fff);cursor:pointer";
    const note = document.createElement("span");
    note.id = "api-key-note";
    note.setAttribute("role", "status");
    note.style.cssText = "flex-basis:100%;font-size:12px;color:var(--muted,#5f6779)";
    form.append(label, input, button, note);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      keep(key);
      input.value = "";
      shown(false);
      for (const fn of listeners) {
        try {
          fn(key);
        } catch (err) {
          console.warn("after the API key was entered:", err);
        }
      }
    });
    document.body.prepend(form);
    return form;
  }

  function shown(on) {
    form.hidden = !on;
    form.style.display = on ? "flex" : "none"; // (a page's CSS may not hide [hidden] elements with a display)
  }

  /* Show the key field, saying why (`why`: the server's message, or nothing). */
  function ask(why) {
    const f = build();
    const hint = why && why.includes("keys create") ? "" :
      " Enter an API key (an admin makes one with: nlweb-local keys create --name NAME --role user).";
    f.querySelector("#api-key-note").textContent = (why || "This server needs an API key.") + hint +
      " The key is kept in this tab only.";
    if (f.hidden) {
      shown(true);
      f.querySelector("#api-key").focus();
    }
  }

  async function reason(res) {
    try {
      const body = await res.clone().json();
      const e = body && body.error;
      return typeof e === "string" ? e : (e && e.message) || "";
    } catch (_) {
      return "";
    }
  }

  /* fetch(), with the key as Authorization: Bearer; a 401 (or a 403 for want of a role) shows the key field. */
  async function authFetch(url, init) {
    const opts = Object.assign({}, init || {});
    const headers = new Headers(opts.headers || {});
    const key = current();
    if (key) headers.set("Authorization", "Bearer " + key);
    opts.headers = headers;
    const res = await fetch(url, opts);
    if (res.status === 401 || (res.status === 403 && key)) ask(await reason(res));
    return res;
  }

  window.nlwebAuth = {
    fetch: authFetch,
    key: current,
    ask: ask,
    forget() {
      keep(null);
    },
    onKey(fn) {
      listeners.push(fn);
    },
  };
})();
