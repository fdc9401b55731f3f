/* nlweb-local chat page: asks /ask (NLWeb v3 SSE) and renders the stream as it arrives.
 *
 * Plain browser JavaScript, no build step, no dependencies. Every piece of text that comes from the
 * server or the model is inserted with textContent / createTextNode, never as HTML.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------ SSE parsing

  /**
   * Incremental Server-Sent Events parser (WHATWG semantics): feed it decoded text in arbitrary
   * chunks; it calls onEvent(data, eventName) for every complete event and onComment(text) for
   * `: comment` lines. Lines may end in \n, \r\n or \r and may be split anywhere across chunks.
   */
  function createSSEParser(onEvent, onComment) {
    let buf = "";
    let data = [];
    let eventName = "";

    function dispatch() {
      if (data.length) onEvent(data.join("\n"), eventName || "message");
      data = [];
      eventName = "";
    }

    function line(l) {
      if (l === "") return dispatch();
      if (l[0] === ":") {
        if (onComment) onComment(l.slice(1).trim());
        return;
      }
      const i = l.indexOf(":");
      const field = i < 0 ? l : l.slice(0, i);
      let value = i < 0 ? "" : l.slice(i + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") eventName = value;
      // id / retry / unknown fields are irrelevant here
    }

    function drain(final) {
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buf);
        if (!m) break;
        // A lone \r at the very end may be the first half of \r\n: wait for the next chunk.
        if (m[0] === "\r" && m.index === buf.length - 1 && !final) break;
        line(buf.slice(0, m.index));
        buf = buf.slice(m.index + m[0].length);
      }
    }

    return {
      push(text) {
        buf += text;
        drain(false);
      },
      end() {
        drain(true);
        if (buf) line(buf);
        buf = "";
        dispatch(); // be lenient with a server that omits the final blank line
      },
    };
  }

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = v;
        else if (k === "hidden") node.hidden = true;
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  /** Only http(s) URLs become links; anything else (javascript:, data:) is refused. */
  function safeUrl(u) {
    if (typeof u !== "string" || !u) return null;
    try {
      const parsed = new URL(u, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (_) {
      return null;
    }
  }

  function link(href, text, cls) {
    const safe = safeUrl(href);
    if (!safe) return el("span", { class: cls, text: text });
    return el("a", { class: cls, href: safe, target: "_blank", rel: "noopener noreferrer", text: text });
  }

  function displayUrl(u) {
    try {
      const p = new URL(u);
      const path = p.pathname === "/" ? "" : p.pathname;
      return p.host + path;
    } catch (_) {
      return String(u || "");
    }
  }

  // ------------------------------------------------------------------ schema.org facts

  /** A short readable string for a schema.org value (string, number, {name}, {@value}, array). */
  function text(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "string") return v.trim();
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    if (Array.isArray(v)) return v.map(text).filter(Boolean).slice(0, 3).join(", ");
    if (typeof v === "object") return text(v.name || v["@value"] || v.text || v.value || "");
    return "";
  }

  function first(v) {
    return Array.isArray(v) ? v[0] : v;
  }

  function types(obj) {
    const t = obj && obj["@type"];
    return [].concat(t || []).map(String);
  }

  function duration(v) {
    const s = text(v);
    const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/i.exec(s);
    if (!m || s === "P" || s === "PT") return s;
    const parts = [];
    if (m[1]) parts.push(m[1] + " d");
    if (m[2]) parts.push(m[2] + " h");
    if (m[3]) parts.push(m[3] + " min");
    if (m[4] && !parts.length) parts.push(Math.round(Number(m[4])) + " s");
    return parts.join(" ") || s;
  }

  function schemaEnum(v) {
    // "https://schema.org/VeganDiet" -> "Vegan", "https://schema.org/InStock" -> "In stock"
    const words = []
      .concat(v || [])
      .map((x) => text(x).replace(/^https?:\/\/schema\.org\//, "").replace(/(.)Diet$/, "$1"))
      .filter(Boolean)
      .map((x) => x.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase())
      .join(", ");
    return words ? words[0].toUpperCase() + words.slice(1) : "";
  }

  function price(offers) {
    const o = first(offers);
    if (!o || typeof o !== "object") return "";
    const p = o.price !== undefined ? o.price : o.lowPrice;
    if (p === undefined || p === null || p === "") return "";
    const n = Number(p);
    if (!Number.isFinite(n)) return text(p);
    if (n === 0) return "Free";
    const cur = text(o.priceCurrency);
    if (/^[A-Z]{3}$/.test(cur)) {
      try {
        return new Intl.NumberFormat(undefined, { style: "currency", currency: cur }).format(n);
      } catch (_) {
        /* fall through */
      }
    }
    return (cur ? cur + " " : "") + n.toFixed(2);
  }

  function when(v) {
    const s = text(v);
    if (!s) return "";
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) return s;
    const hasTime = /T\d/.test(s);
    const opts = { weekday: "short", year: "numeric", month: "short", day: "numeric" };
    if (hasTime) Object.assign(opts, { hour: "numeric", minute: "2-digit" });
    return d.toLocaleString(undefined, opts);
  }

  function place(v) {
    const p = first(v);
    if (!p) return "";
    if (typeof p === "string") return p;
    const name = text(p.name);
    const addr = p.address && typeof p.address === "object" ? text(p.address.addressLocality) : text(p.address);
    return [name, addr].filter(Boolean).filter((x, i, a) => a.indexOf(x) === i).join(", ");
  }

  /** Up to four [label, value] facts worth showing on a card, chosen by the item's @type. */
  function facts(obj) {
    if (!obj || typeof obj !== "object") return [];
    const t = types(obj);
    const out = [];
    const add = (k, v) => {
      if (v && out.length < 4) out.push([k, v]);
    };
    if (t.includes("Recipe")) {
      add("Time", duration(obj.totalTime || obj.cookTime || obj.prepTime));
      add("Cuisine", text(obj.recipeCuisine));
      add("Diet", schemaEnum(obj.suitableForDiet));
      add("Serves", text(obj.recipeYield));
    } else if (t.includes("Product")) {
      add("Brand", text(obj.brand || obj.manufacturer));
      add("Price", price(obj.offers));
      const avail = first(obj.offers) && first(obj.offers).availability;
      add("Availability", avail ? schemaEnum(avail) : "");
      add("Category", text(obj.category));
    } else if (t.some((x) => /Event$/.test(x))) {
      add("When", when(obj.startDate));
      add("Where", place(obj.location));
      add("Price", price(obj.offers));
      add("Organizer", text(obj.organizer));
    } else {
      add("By", text(obj.author || obj.creator || obj.publisher));
      add("Published", when(obj.datePublished || obj.uploadDate));
      add("Duration", duration(obj.duration || obj.timeRequired));
      add("Price", price(obj.offers));
    }
    const rating = obj.aggregateRating && text(obj.aggregateRating.ratingValue);
    if (rating) add("Rating", rating + " ★");
    return out;
  }

  // ------------------------------------------------------------------ inline text with citations

  /**
   * Renders model text safely: paragraphs, line breaks, **bold**, [text](url) and bare URLs.
   * URLs of cited items become numbered citation links (a URL the model wrapped in brackets or
   * parentheses loses them); other http(s) URLs become plain links.
   * `cite(url)` returns a citation number or 0.
   */
  function renderRichText(container, str, cite) {
    const URL_CHARS = "[^\\s<>\"'\\])]+";
    const token = new RegExp(
      "\\[([^\\]\\n]+)\\]\\((https?:\\/\\/[^)\\s]+)\\)" + // 1,2: [text](url)
        "|\\*\\*([^*\\n]+)\\*\\*" + // 3: **bold**
        "|([(\\[])\\s*(https?:\\/\\/" + URL_CHARS + ")\\s*([)\\]])" + // 4,5,6: (url) or [url]
        "|(https?:\\/\\/" + URL_CHARS + ")", // 7: bare url
      "g"
    );
    const citation = (url, n) => el("sup", { class: "cite" }, [link(url, "[" + n + "]", "cite-link")]);
    const paras = String(str || "").trim().split(/\n\s*\n/);
    for (const para of paras) {
      if (!para.trim()) continue;
      const p = el("p");
      para.split("\n").forEach((ln, li) => {
        if (li) p.appendChild(el("br"));
        let last = 0;
        let m;
        token.lastIndex = 0;
        while ((m = token.exec(ln))) {
          if (m.index > last) p.appendChild(document.createTextNode(ln.slice(last, m.index)));
          last = token.lastIndex;
          if (m[3] !== undefined) {
            p.appendChild(el("strong", { text: m[3] }));
          } else if (m[1] !== undefined) {
            p.appendChild(link(m[2], m[1], "inline-link"));
            const n = cite ? cite(m[2]) : 0;
            if (n) p.appendChild(citation(m[2], n));
          } else if (m[5] !== undefined) {
            const n = cite ? cite(m[5]) : 0;
            if (n) {
              // "Tart (https://x/tart)" -> "Tart[1]": drop the brackets and the space before them
              const prevNode = p.lastChild;
              if (prevNode && prevNode.nodeType === 3) prevNode.textContent = prevNode.textContent.replace(/\s+$/, "");
              p.appendChild(citation(m[5], n));
            } else {
              p.append(m[4], link(m[5], displayUrl(m[5]), "inline-link"), m[6]);
            }
          } else {
            let url = m[7];
            const t = /[.,;:!?]+$/.exec(url);
            const trailing = t ? t[0] : "";
            if (trailing) url = url.slice(0, -trailing.length);
            const n = cite ? cite(url) : 0;
            p.appendChild(n ? citation(url, n) : link(url, displayUrl(url), "inline-link"));
            if (trailing) p.appendChild(document.createTextNode(trailing));
          }
        }
        if (last < ln.length) p.appendChild(document.createTextNode(ln.slice(last)));
      });
      container.appendChild(p);
    }
  }

  // ------------------------------------------------------------------ one turn of the conversation

  const MODE_LABEL = { list: "List", summarize: "Summarize", generate: "Generate" };
  const DEGRADED_NOTE = "The language model was unavailable: some results are ordered by similarity only.";

  class Turn {
    constructor(query, site, mode, siteLabel) {
      this.query = query;
      this.site = site;
      this.mode = mode;
      this.items = new Map(); // url -> {item, node}
      this.started = performance.now();
      this.gotContent = false;
      this.ended = false;
      this.failed = false;
      this.noResults = false;
      this.noticed = new Set(); // the warnings shown so far
      this.degradedNote = ""; // the server's note that the LLM could not rank, kept once the answer ends

      this.statusText = el("span", { class: "status-text", text: "Thinking…" });
      this.statusTime = el("span", { class: "status-time", text: "" });
      this.status = el("div", { class: "status", role: "status" }, [
        el("span", { class: "spinner", "aria-hidden": "true" }),
        this.statusText,
        this.statusTime,
      ]);
      this.decontext = el("p", { class: "decontext", hidden: true });
      this.notices = el("ul", { class: "notices", "aria-label": "Status messages" });
      this.answer = el("section", { class: "answer-block", hidden: true, "aria-label": "Generated answer" });
      this.summary = el("section", { class: "summary-block", hidden: true, "aria-label": "Summary" });
      this.error = el("p", { class: "error-line", role: "alert", hidden: true });
      this.empty = el("div", { class: "empty-state", hidden: true });
      this.resultsHead = el("h2", { class: "results-head", hidden: true });
      this.results = el("ol", { class: "results", "aria-label": "Results" });
      this.footer = el("div", { class: "turn-footer", hidden: true });

      this.node = el("li", { class: "turn", "data-state": "streaming", "data-mode": mode }, [
        el("div", { class: "msg msg-user" }, [
          el("div", { class: "bubble", text: query }),
          el("div", { class: "msg-meta", text: siteLabel + " · " + (MODE_LABEL[mode] || mode) }),
        ]),
        el("div", { class: "msg msg-assistant" }, [
          this.status,
          this.decontext,
          this.notices,
          this.error,
          this.answer,
          this.summary,
          this.empty,
          this.resultsHead,
          this.results,
          this.footer,
        ]),
      ]);
      this.timer = setInterval(() => this.tick(), 100);
    }

    elapsed() {
      return (performance.now() - this.started) / 1000;
    }

    tick() {
      this.statusTime.textContent = this.elapsed().toFixed(1) + " s";
    }

    setStatus(s) {
      this.statusText.textContent = s;
    }

    notice(s, kind) {
      if (!s) return;
      this.notices.appendChild(el("li", { class: "notice" + (kind ? " notice-" + kind : ""), text: s }));
    }

    /** A warning kept under the answer (each text once). */
    note(s) {
      if (!s || this.noticed.has(s)) return;
      this.noticed.add(s);
      this.notice(s, "warn");
    }

    showDecontext(dq) {
      if (!dq || dq.trim().toLowerCase() === this.query.trim().toLowerCase()) return;
      this.decontext.textContent = "";
      this.decontext.append("Searching for: ", el("q", { text: dq }));
      this.decontext.hidden = false;
    }

    addItems(list) {
      for (const it of [].concat(list || [])) {
        if (!it || typeof it !== "object") continue;
        const key = it.url || it.name || JSON.stringify(it).slice(0, 200);
        const prevEntry = this.items.get(key);
        const node = this.card(it);
        if (prevEntry) prevEntry.node.replaceWith(node);
        this.items.set(key, { item: it, node: node });
      }
      // Keep cards sorted by score, highest first; re-append in order (moves existing nodes).
      const sorted = [...this.items.values()].sort((a, b) => score(b.item) - score(a.item));
      sorted.forEach((e, i) => {
        if (this.results.children[i] !== e.node) this.results.insertBefore(e.node, this.results.children[i] || null);
      });
      if (this.items.size) {
        this.gotContent = true;
        this.empty.hidden = true;
        this.resultsHead.hidden = false;
        this.resultsHead.textContent = this.items.size === 1 ? "1 result" : this.items.size + " results";
        this.setStatus("Ranking results… " + this.items.size + " so far");
      }
    }

    card(it) {
      const obj = it.schema_object && typeof it.schema_object === "object" ? first(it.schema_object) || {} : {};
      const s = score(it);
      const t = types(obj)[0] || "";
      const badgeClass = "score-badge " + (s >= 80 ? "score-high" : s >= 65 ? "score-mid" : "score-low");
      const img = typeof obj.image === "string" ? safeUrl(obj.image) : null;
      const factList = facts(obj);
      const name = text(it.name) || text(obj.name) || displayUrl(it.url) || "Untitled";

      const body = el("div", { class: "card-body" }, [
        el("div", { class: "card-top" }, [
          t ? el("span", { class: "type-chip", text: t.replace(/([a-z])([A-Z])/g, "$1 $2") }) : null,
          it.site ? el("span", { class: "card-site", text: text(it.site) }) : null,
          el("span", {
            class: badgeClass,
            title: "Relevance score (0–100)",
            "aria-label": "Relevance score " + s + " out of 100",
            text: String(s),
          }),
        ]),
        el("h3", { class: "card-title" }, [link(it.url, name, "result-title")]),
        it.description ? el("p", { class: "card-why", text: text(it.description) }) : null,
        factList.length
          ? el(
              "dl",
              { class: "facts" },
              factList.map(([k, v]) => el("div", { class: "fact" }, [el("dt", { text: k }), el("dd", { text: v })]))
            )
          : null,
        it.url ? el("div", { class: "card-url", text: displayUrl(it.url) }) : null,
      ]);
      const li = el("li", { class: "result-card" + (img ? " has-image" : ""), "data-score": s });
      if (img) {
        const image = el("img", { src: img, alt: "", loading: "lazy", referrerpolicy: "no-referrer" });
        image.addEventListener("error", () => {
          li.classList.remove("has-image");
          media.remove();
        });
        const media = el("div", { class: "card-media" }, [image]);
        li.appendChild(media);
      }
      li.appendChild(body);
      return li;
    }

    showSummary(content) {
      this.summary.textContent = "";
      this.summary.appendChild(el("h2", { class: "block-title", text: "Summary" }));
      const bodyEl = el("div", { class: "block-body" });
      renderRichText(bodyEl, text(content) || String(content || ""), (u) => this.citeFromResults(u));
      this.summary.appendChild(bodyEl);
      this.summary.hidden = false;
      this.gotContent = true;
    }

    citeFromResults(u) {
      // Summaries may mention result URLs; number them by their order in the result list.
      const urls = [...this.results.querySelectorAll("a.result-title")].map((a) => a.href);
      const i = urls.indexOf(safeUrl(u));
      return i >= 0 ? i + 1 : 0;
    }

    showAnswer(answer, items) {
      const sources = [].concat(items || []).filter((x) => x && typeof x === "object");
      const urls = sources.map((x) => safeUrl(x.url));
      const cite = (u) => {
        const i = urls.indexOf(safeUrl(u));
        return i >= 0 ? i + 1 : 0;
      };
      this.answer.textContent = "";
      this.answer.appendChild(el("h2", { class: "block-title", text: "Answer" }));
      const bodyEl = el("div", { class: "block-body" });
      renderRichText(bodyEl, text(answer) || String(answer || ""), cite);
      this.answer.appendChild(bodyEl);
      if (sources.length) {
        this.answer.appendChild(el("h3", { class: "sources-title", text: "Sources" }));
        this.answer.appendChild(
          el(
            "ol",
            { class: "sources" },
            sources.map((s, i) =>
              el("li", { class: "source" }, [
                el("span", { class: "source-num", text: String(i + 1) }),
                link(s.url, text(s.name) || displayUrl(s.url), "source-link"),
                el("span", { class: "source-url", text: displayUrl(s.url) }),
              ])
            )
          )
        );
      }
      this.answer.hidden = false;
      this.gotContent = true;
    }

    showError(msg) {
      this.failed = true;
      this.error.textContent = "";
      this.error.append(el("strong", { text: "Something went wrong. " }), msg || "The server reported an error.");
      this.error.hidden = false;
    }

    showEmpty(msg) {
      this.noResults = true;
      this.empty.textContent = "";
      this.empty.append(
        el("p", { class: "empty-title", text: "No matching results" }),
        el("p", {
          class: "empty-hint",
          text:
            (msg && !/^no results( found)?\.?$/i.test(msg.trim()) ? msg + " " : "") +
            "Try different words, a broader question, or another site.",
        })
      );
      this.empty.hidden = false;
    }

    finish(opts) {
      if (this.ended) return;
      this.ended = true;
      clearInterval(this.timer);
      const secs = this.elapsed();
      if (opts && opts.aborted) this.notice("Stopped.", "muted");
      else if (opts && opts.error) this.failed = true;
      if (!this.failed && !this.gotContent && !this.noResults && !(opts && opts.aborted)) this.showEmpty("");
      this.status.hidden = true;
      const n = this.items.size;
      const bits = [];
      if (n) bits.push(n === 1 ? "1 result" : n + " results");
      bits.push((this.failed ? "Failed after " : "Answered in ") + secs.toFixed(1) + " s");
      this.footer.textContent = "";
      this.footer.appendChild(el("span", { class: "elapsed", text: bits.join(" · ") }));
      if (this.onRate && this.gotContent && !this.failed && !(opts && opts.aborted)) this.footer.appendChild(this.rating());
      this.footer.hidden = false;
      this.node.dataset.state = this.failed ? "error" : opts && opts.aborted ? "aborted" : "done";
    }

    /** Thumbs up / down for this answer: POST /feedback (the quality evidence of A/B tests). */
    rating() {
      const thanks = el("span", { class: "rate-note", "aria-live": "polite", text: "" });
      const buttons = [];
      const send = async (value, chosen) => {
        for (const b of buttons) b.disabled = true;
        chosen.setAttribute("aria-pressed", "true");
        try {
          const res = await this.onRate(value);
          thanks.textContent = res.ok ? "Thanks for the feedback." : "Could not send the feedback (HTTP " + res.status + ").";
        } catch (_) {
          thanks.textContent = "Could not send the feedback.";
        }
      };
      for (const [value, label, glyph] of [[1, "Good answer", "\u{1F44D}"], [-1, "Bad answer", "\u{1F44E}"]]) {
        const b = el("button", { type: "button", class: "rate", "aria-label": label, title: label, "aria-pressed": "false", text: glyph });
        b.dataset.rating = String(value);
        b.addEventListener("click", () => send(value, b));
        buttons.push(b);
      }
      return el("span", { class: "rate-group", role: "group", "aria-label": "Rate this answer" }, [...buttons, thanks]);
    }
  }

  function score(it) {
    const n = Number(it && it.score);
    return Number.isFinite(n) ? Math.round(n) : 0;
  }

  /** Applies one protocol message to a turn. Returns true when the response is over. */
  function handleMessage(turn, msg) {
    if (!msg || typeof msg !== "object") return false;
    if (msg.query_id && !turn.queryId) turn.queryId = String(msg.query_id);
    const type = msg.message_type || msg["message-type"] || msg.type || "";
    switch (type) {
      case "begin-nlweb-response":
        turn.setStatus("Searching…");
        return false;
      case "decontextualized_query":
        turn.showDecontext(text(msg.decontextualized_query));
        turn.setStatus("Searching…");
        return false;
      case "result":
        if (msg["@type"] === "Summary") turn.showSummary(msg.content);
        else if (Array.isArray(msg.content)) turn.addItems(msg.content);
        else if (msg.content && typeof msg.content === "object") turn.addItems([msg.content]);
        if (turn.mode === "summarize" && turn.items.size && turn.summary.hidden) turn.setStatus("Summarizing…");
        if (turn.mode === "generate" && turn.items.size && turn.answer.hidden) turn.setStatus("Writing an answer…");
        return false;
      case "result_batch": // v1
        turn.addItems(msg.results);
        return false;
      case "summary": // v1
        turn.showSummary(msg.message);
        return false;
      case "nlws":
        turn.showAnswer(msg.answer, msg.items);
        return false;
      case "no_results":
        turn.showEmpty(text(msg.message));
        return false;
      case "error":
        turn.showError(text(msg.error) || text(msg.message));
        return false;
      case "end-nlweb-response":
      case "complete": // v1
        // an answer the LLM could not (fully) rank says so for good, not only in the status line while it
        // streams: the server's own note ("The language model is unavailable ...") or a plain one
        if (msg.degraded) turn.note(turn.degradedNote || DEGRADED_NOTE);
        turn.finish({ error: !!msg.error });
        return true;
      case "intermediate_message": {
        const note = text(msg.message) || text(msg.content);
        turn.setStatus(note || "Working…"); // progress: shown while it streams
        if (note && /similarity/i.test(note)) turn.degradedNote = note;
        return false;
      }
      default: {
        const s = text(msg.message) || (typeof msg.content === "string" ? msg.content : "") || text(msg.text);
        if (s) turn.notice(s);
        return false;
      }
    }
  }

  // ------------------------------------------------------------------ the page

  function newConversationId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "c-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
  }

  function init() {
    const form = document.getElementById("ask-form");
    const input = document.getElementById("query");
    const siteSel = document.getElementById("site");
    const button = document.getElementById("ask-button");
    const buttonLabel = button.querySelector(".btn-label");
    const turnsEl = document.getElementById("turns");
    const welcome = document.getElementById("welcome");
    const chat = document.getElementById("chat");
    const newBtn = document.getElementById("new-conversation");

    const state = { conversationId: newConversationId(), prev: [], controller: null, turn: null };
    const store = {
      get(k) {
        try {
          return localStorage.getItem("nlweb-local." + k);
        } catch (_) {
          return null;
        }
      },
      set(k, v) {
        try {
          localStorage.setItem("nlweb-local." + k, v);
        } catch (_) {
          /* private mode */
        }
      },
    };

    // With auth on, the first 401 shows the key field (auth.js); the key is kept in this tab
    // (sessionStorage) and sent as Authorization: Bearer on every request, the /ask stream included.
    const auth = window.nlwebAuth;
    const authedFetch = auth ? auth.fetch : (url, init) => fetch(url, init);

    const params = new URLSearchParams(window.location.search);
    const savedMode = params.get("mode") || store.get("mode");
    if (savedMode) {
      const r = form.querySelector('input[name="mode"][value="' + CSS.escape(savedMode) + '"]');
      if (r) r.checked = true;
    }
    form.addEventListener("change", (e) => {
      if (e.target.name === "mode") store.set("mode", e.target.value);
      if (e.target === siteSel) store.set("site", siteSel.value);
    });

    // Focus the question box, but not on touch screens, where that would pop up the keyboard.
    const finePointer = window.matchMedia ? window.matchMedia("(pointer: fine)").matches : true;
    function focusInput(force) {
      if (force || finePointer) input.focus({ preventScroll: true });
    }

    function mode() {
      const r = form.querySelector('input[name="mode"]:checked');
      return r ? r.value : "list";
    }

    async function loadSites() {
      try {
        const res = await authedFetch("/sites", { headers: { Accept: "application/json" } });
        if (!res.ok) throw new Error("HTTP " + res.status);
        const body = await res.json();
        const sites = Array.isArray(body) ? body : [].concat(body.sites || []);
        const wanted = params.get("site") || store.get("site");
        for (const s of sites) {
          const name = text(typeof s === "object" && s ? s.name || s.site : s);
          if (!name || name === "all" || [...siteSel.options].some((o) => o.value === name)) continue;
          siteSel.appendChild(el("option", { value: name, text: name }));
        }
        if (wanted && [...siteSel.options].some((o) => o.value === wanted)) siteSel.value = wanted;
        else if (sites.length === 1) siteSel.value = text(sites[0]);
      } catch (err) {
        console.warn("Could not load the site list:", err);
      }
    }

    function setBusy(busy) {
      input.disabled = busy;
      siteSel.disabled = busy;
      buttonLabel.textContent = busy ? "Stop" : "Ask";
      button.classList.toggle("btn-stop", busy);
      button.setAttribute("aria-label", busy ? "Stop answering" : "Ask");
      chat.setAttribute("aria-busy", busy ? "true" : "false");
      document.body.classList.toggle("busy", busy);
      if (!busy) focusInput();
    }

    async function ask(query) {
      const site = siteSel.value || "all";
      const m = mode();
      const siteLabel = site === "all" ? "All sites" : site;
      const turn = new Turn(query, site, m, siteLabel);
      welcome.hidden = true;
      turnsEl.appendChild(turn.node);
      turn.node.scrollIntoView({ block: "start", behavior: "smooth" });

      const qs = new URLSearchParams({
        query: query,
        site: site,
        generate_mode: m,
        prev: JSON.stringify(state.prev),
        conversation_id: state.conversationId,
        api: "v3", // this page reads v3 (a bare GET asking for an event stream would get v1)
      });
      state.prev.push(query);
      const controller = new AbortController();
      state.controller = controller;
      state.turn = turn;
      setBusy(true);
      let done = false;
      try {
        const res = await authedFetch("/ask?" + qs.toString(), {
          headers: { Accept: "text/event-stream" },
          signal: controller.signal,
        });
        turn.requestId = res.headers.get("x-request-id") || "";
        turn.onRate = (rating) =>
          authedFetch("/feedback", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify(Object.assign({ rating: rating }, turn.requestId ? { request_id: turn.requestId } : {},
              turn.queryId ? { query_id: turn.queryId } : {})),
          });
        if (!res.ok) {
          let detail = "";
          try {
            const t = await res.text();
            try {
              const j = JSON.parse(t);
              detail = text(j.error) || text(j.message) || text(j.detail) || "";
              if (j.error && typeof j.error === "object") detail = text(j.error.message) || detail;
            } catch (_) {
              detail = t.slice(0, 300);
            }
          } catch (_) {
            /* ignore */
          }
          turn.showError("The server answered " + res.status + (detail ? ": " + detail : "."));
          turn.finish({ error: true });
          return;
        }
        const ctype = res.headers.get("Content-Type") || "";
        if (!/event-stream/i.test(ctype) || !res.body) {
          // Non-streamed (v3: a JSON array of the same messages).
          const body = await res.json();
          for (const msg of [].concat(body)) if (handleMessage(turn, msg)) done = true;
        } else {
          const reader = res.body.getReader();
          const decoder = new TextDecoder("utf-8");
          const parser = createSSEParser((data) => {
            if (done) return;
            let msg;
            try {
              msg = JSON.parse(data);
            } catch (_) {
              console.warn("Ignoring a message that is not JSON:", data.slice(0, 200));
              return;
            }
            if (handleMessage(turn, msg)) done = true;
          });
          while (!done) {
            const { value, done: eof } = await reader.read();
            if (eof) {
              parser.push(decoder.decode());
              parser.end();
              break;
            }
            parser.push(decoder.decode(value, { stream: true }));
          }
          if (done) reader.cancel().catch(() => {});
        }
        if (!done) {
          turn.notice("The connection closed before the answer was complete.", "warn");
          turn.finish({});
        }
      } catch (err) {
        if (controller.signal.aborted) turn.finish({ aborted: true });
        else {
          turn.showError("Could not reach the server (" + (err && err.message ? err.message : String(err)) + ").");
          turn.finish({ error: true });
        }
      } finally {
        if (!turn.ended) turn.finish({});
        if (state.turn === turn) {
          state.controller = null;
          state.turn = null;
          setBusy(false);
        }
      }
    }

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (state.controller) {
        state.controller.abort();
        return;
      }
      const q = input.value.trim();
      if (!q) {
        focusInput(true);
        return;
      }
      input.value = "";
      ask(q);
    });

    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.controller) state.controller.abort();
      else if (e.key === "/" && document.activeElement !== input && !/^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName)) {
        e.preventDefault();
        input.focus();
      }
    });

    for (const b of document.querySelectorAll(".example")) {
      b.addEventListener("click", () => {
        if (state.controller) return;
        ask(b.textContent.trim());
      });
    }

    newBtn.addEventListener("click", () => {
      if (state.controller) state.controller.abort();
      state.conversationId = newConversationId();
      state.prev = [];
      turnsEl.textContent = "";
      welcome.hidden = false;
      input.value = "";
      focusInput();
      window.scrollTo({ top: 0 });
    });

    loadSites();
    if (auth) auth.onKey(() => loadSites()); // a key entered after a 401: the site list, now readable
    focusInput();
  }

  window.NLWebChat = { createSSEParser, renderRichText, facts, handleMessage };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
