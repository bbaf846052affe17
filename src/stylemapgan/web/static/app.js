// StyleMapGAN web editor: plain JavaScript, no build step, no external resources.
//
// State lives here; the server keeps images (by content id), their projections and results.
// Every change (a brush stroke, a drag, an option) sends an edit with an increasing sequence
// number; the server computes only the newest one per session and answers older pending ones
// as "superseded", so painting never piles up work.
(() => {
  "use strict";

  const $ = (sel) => document.querySelector(sel);
  const MAX_HISTORY = 50;
  const LIVE_INTERVAL_MS = 120;

  const state = {
    info: null,
    size: 256,
    images: new Map(), // id -> {id, name, url, reconstruction, img}
    original: null,
    refs: [], // {image, mask: canvas, dx, dy, scale, angle, flip}
    active: 0,
    space: "wplus",
    steps: 1,
    result: null, // {seq, frames: [url], imgs: [Image], record, method, compute}
    frame: 0,
  };
  const history = { undo: [], redo: [] };
  const session = randomId();
  let seq = 0;
  let shownSeq = 0;
  let pendingEdits = 0;
  let pendingUploads = 0;
  let liveTimer = null;
  let lastSent = 0;
  let pointer = null; // the gesture in progress

  const refCanvas = $("#ref-canvas");
  const origCanvas = $("#orig-canvas");
  const resultCanvas = $("#result-canvas");

  // ------------------------------------------------------------------ helpers
  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setStatus(text, isError = false) {
    const el = $("#status");
    el.textContent = text;
    el.title = text;
    el.classList.toggle("error", isError);
  }

  function updateProgress() {
    const busy = pendingEdits > 0 || pendingUploads > 0;
    const el = $("#progress");
    el.hidden = !busy;
    el.dataset.state = busy ? "busy" : "idle";
    document.body.setAttribute("aria-busy", busy ? "true" : "false");
    $("#progress-text").textContent = pendingUploads > 0 ? "uploading and projecting…" : "editing…";
  }

  async function api(path, options = {}) {
    const res = await fetch(path, options);
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
    if (!res.ok) {
      let detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
      throw new Error(detail || `${res.status} ${res.statusText}`);
    }
    return data;
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`cannot load ${url}`));
      img.src = url;
    });
  }

  function newMask() {
    const c = document.createElement("canvas");
    c.width = c.height = state.size;
    c.getContext("2d", { willReadFrequently: true }); // masks are read back for every edit
    return c;
  }

  function newRef(image) {
    return { image, mask: newMask(), dx: 0, dy: 0, scale: 1, angle: 0, flip: "none" };
  }

  function maskIsEmpty(mask) {
    const data = mask.getContext("2d").getImageData(0, 0, state.size, state.size).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return false;
    return true;
  }

  function canvasPoint(canvas, event) {
    const r = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - r.left) * state.size) / r.width,
      y: ((event.clientY - r.top) * state.size) / r.height,
    };
  }

  function activeRef() {
    return state.refs[state.active] || null;
  }

  function tool() {
    return document.querySelector('input[name="tool"]:checked').value;
  }

  function brushSize() {
    return Number($("#brush-size").value);
  }

  // ------------------------------------------------------------------ undo / redo
  function snapshot() {
    return {
      original: state.original,
      active: state.active,
      space: state.space,
      steps: state.steps,
      refs: state.refs.map((r) => ({
        image: r.image, dx: r.dx, dy: r.dy, scale: r.scale, angle: r.angle, flip: r.flip,
        mask: r.mask.getContext("2d").getImageData(0, 0, state.size, state.size),
      })),
    };
  }

  function restore(snap) {
    state.original = snap.original;
    state.active = snap.active;
    state.space = snap.space;
    state.steps = snap.steps;
    state.refs = snap.refs.map((r) => {
      const mask = newMask();
      mask.getContext("2d").putImageData(r.mask, 0, 0);
      return { image: r.image, dx: r.dx, dy: r.dy, scale: r.scale, angle: r.angle, flip: r.flip, mask };
    });
    if (!state.original) {
      state.result = null; // nothing to edit any more; ignore edits still in flight
      shownSeq = seq + 1;
      syncResultControls();
    }
    syncControls();
    renderAll();
    requestEdit(true);
  }

  function pushHistory() {
    history.undo.push(snapshot());
    if (history.undo.length > MAX_HISTORY) history.undo.shift();
    history.redo = [];
    updateHistoryButtons();
  }

  function undo() {
    if (!history.undo.length) return;
    history.redo.push(snapshot());
    restore(history.undo.pop());
    updateHistoryButtons();
  }

  function redo() {
    if (!history.redo.length) return;
    history.undo.push(snapshot());
    restore(history.redo.pop());
    updateHistoryButtons();
  }

  function updateHistoryButtons() {
    $("#undo").disabled = history.undo.length === 0;
    $("#redo").disabled = history.redo.length === 0;
  }

  // ------------------------------------------------------------------ images and roles
  async function addImageRecord(rec) {
    let entry = state.images.get(rec.id);
    if (!entry) {
      entry = { ...rec, img: await loadImage(rec.url) };
      state.images.set(rec.id, entry);
    }
    if (!state.original) {
      pushHistory();
      state.original = rec.id;
    } else if (state.refs.length === 0 && rec.id !== state.original) {
      pushHistory();
      state.refs.push(newRef(rec.id));
      state.active = 0;
    }
    renderLibrary();
    renderAll();
    requestEdit(true);
  }

  function setOriginal(id) {
    if (state.original === id) return;
    pushHistory();
    state.original = id;
    renderLibrary();
    renderAll();
    requestEdit(true);
  }

  function addReference(id) {
    const max = state.info ? state.info.max_references : 4;
    if (state.refs.length >= max) {
      setStatus(`at most ${max} references; remove one first`, true);
      return;
    }
    pushHistory();
    state.refs.push(newRef(id));
    state.active = state.refs.length - 1;
    renderLibrary();
    renderAll();
    requestEdit(true);
  }

  function removeReference(index) {
    pushHistory();
    state.refs.splice(index, 1);
    state.active = Math.max(0, Math.min(state.active, state.refs.length - 1));
    renderLibrary();
    renderAll();
    requestEdit(true);
  }

  async function needsPicker(file) {
    // Only a square image no larger than the model goes straight to the model's square (a
    // gallery-sized image: nothing to choose, nothing to paste back). Every other photo opens
    // the picker (a square to drag, or the detected faces for a face model, which needs its
    // faces aligned) and its edits can be viewed pasted back into the whole photo. Formats the
    // browser cannot decode go to the picker too: the server sends a PNG preview.
    if (state.info.align) return true;
    try {
      const bmp = await createImageBitmap(file);
      const small = bmp.width === bmp.height && bmp.width <= state.size;
      bmp.close();
      return !small;
    } catch (err) {
      return true;
    }
  }

  async function uploadFiles(files) {
    for (const file of files) {
      if (state.info && file.size > state.info.max_upload_bytes) {
        setStatus(`${file.name}: larger than the limit of ${(state.info.max_upload_bytes / 1048576).toFixed(0)} MiB`, true);
        continue;
      }
      const form = new FormData();
      form.append("file", file, file.name);
      const asPhoto = await needsPicker(file);
      await addImage(async () => {
        if (!asPhoto) return api("/api/images", { method: "POST", body: form });
        const photo = await api("/api/photos", { method: "POST", body: form });
        pendingUploads--;  // the picker waits for the user, not for the server
        updateProgress();
        const choice = await pickCrop(photo);
        pendingUploads++;
        updateProgress();
        if (!choice) {
          setStatus(`${photo.name}: not added`);
          return null;
        }
        return api(`/api/photos/${photo.id}/crop`, {
          method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(choice),
        });
      });
    }
  }

  // Run request(), which resolves with an image record (or null: nothing to add), with the
  // progress indicator on; add the record to the library, or show the error.
  async function addImage(request) {
    pendingUploads++;
    updateProgress();
    try {
      const rec = await request();
      if (rec) {
        setStatus(`added ${rec.name}`);
        await addImageRecord(rec);
      }
    } catch (err) {
      setStatus(err.message, true);
    } finally {
      pendingUploads--;
      updateProgress();
    }
  }

  // ------------------------------------------------------------------ picking a face or a square
  function pickCrop(photo) {
    // Resolves with {face: i} or {box: [x0, y0, x1, y1]} (photo pixels), or null if cancelled.
    return new Promise(async (resolve) => {
      const dialog = $("#picker");
      const canvas = $("#picker-canvas");
      const faces = $("#picker-faces");
      const preview = await loadImage(photo.preview);
      const k = preview.naturalWidth / photo.width; // preview pixels per photo pixel
      canvas.width = preview.naturalWidth;
      canvas.height = preview.naturalHeight;
      const side0 = Math.min(photo.width, photo.height);
      let square = [(photo.width - side0) / 2, (photo.height - side0) / 2, side0]; // x, y, side
      let drag = null;
      const draw = () => {
        const ctx = canvas.getContext("2d");
        ctx.drawImage(preview, 0, 0);
        ctx.lineWidth = Math.max(2, canvas.width / 300);
        ctx.strokeStyle = "#34c759";
        photo.faces.forEach((f) => {
          const [x0, y0, x1, y1] = f.box;
          ctx.strokeRect(x0 * k, y0 * k, (x1 - x0) * k, (y1 - y0) * k);
          ctx.fillStyle = "#34c759";
          ctx.font = `${Math.max(12, canvas.width / 40)}px sans-serif`;
          ctx.fillText(String(f.index + 1), x0 * k + 3, y0 * k - 4);
        });
        ctx.strokeStyle = "#ff9500";
        ctx.setLineDash([6, 4]);
        ctx.strokeRect(square[0] * k, square[1] * k, square[2] * k, square[2] * k);
        ctx.setLineDash([]);
      };
      const toPhoto = (event) => {
        const r = canvas.getBoundingClientRect();
        return [(event.clientX - r.left) / r.width * photo.width, (event.clientY - r.top) / r.height * photo.height];
      };
      const clampSquare = (a, b) => {
        let side = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 8);
        side = Math.min(side, photo.width, photo.height);
        let x = b[0] < a[0] ? a[0] - side : a[0];
        let y = b[1] < a[1] ? a[1] - side : a[1];
        x = Math.max(0, Math.min(x, photo.width - side));
        y = Math.max(0, Math.min(y, photo.height - side));
        return [x, y, side];
      };
      canvas.onpointerdown = (e) => { drag = toPhoto(e); canvas.setPointerCapture(e.pointerId); };
      canvas.onpointermove = (e) => { if (drag) { square = clampSquare(drag, toPhoto(e)); draw(); } };
      canvas.onpointerup = () => { drag = null; };
      faces.replaceChildren();
      photo.faces.forEach((f) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "face-choice";
        b.dataset.face = String(f.index);
        b.textContent = `Face ${f.index + 1}`;
        b.onclick = () => finish({ face: f.index });
        faces.append(b);
      });
      $("#picker-title").textContent = photo.faces.length
        ? `${photo.name}: ${photo.faces.length} face(s) found. Choose one (aligned as the model expects), or drag a square.`
        : `${photo.name}: drag a square on the photo (or use the centre square).`;
      const finish = (choice) => {
        dialog.close();
        resolve(choice);
      };
      $("#picker-square").onclick = () => finish({
        box: [Math.round(square[0]), Math.round(square[1]), Math.round(square[0] + square[2]), Math.round(square[1] + square[2])],
      });
      $("#picker-cancel").onclick = () => finish(null);
      dialog.oncancel = (e) => { e.preventDefault(); finish(null); };
      draw();
      dialog.dataset.photo = photo.id;
      dialog.showModal();
    });
  }

  function useGalleryItem(item) {
    return addImage(() => api(`/api/gallery/${item.id}`, { method: "POST" }));
  }

  // ------------------------------------------------------------------ edits
  function requestEdit(now) {
    if (!state.original) return;
    const wait = LIVE_INTERVAL_MS - (performance.now() - lastSent);
    if (now || wait <= 0) {
      clearTimeout(liveTimer);
      liveTimer = null;
      sendEdit();
    } else if (!liveTimer) {
      liveTimer = setTimeout(() => {
        liveTimer = null;
        sendEdit();
      }, wait);
    }
  }

  function editBody(mySeq) {
    const regions = [];
    state.refs.forEach((r, i) => {
      if (!maskIsEmpty(r.mask)) {
        regions.push({
          reference: i, mask: r.mask.toDataURL("image/png"), dx: r.dx, dy: r.dy,
          scale: r.scale, angle: r.angle, flip: r.flip,
        });
      }
    });
    return {
      session, seq: mySeq, original: state.original, references: state.refs.map((r) => r.image),
      regions, space: state.space, steps: state.steps,
    };
  }

  async function sendEdit() {
    lastSent = performance.now();
    const mySeq = ++seq;
    const body = editBody(mySeq);
    pendingEdits++;
    updateProgress();
    try {
      const data = await api("/api/edit", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
      if (data.status !== "done" || mySeq < shownSeq) return; // superseded by a newer edit
      const imgs = await Promise.all(data.frames.map(loadImage));
      if (mySeq < shownSeq) return;
      shownSeq = mySeq;
      const keepEnd = !state.result || state.frame === state.result.frames.length - 1;
      state.result = { seq: mySeq, frames: data.frames, imgs, record: data.record, method: data.method, timing: data.timing, full: data.full || null };
      state.frame = keepEnd ? imgs.length - 1 : Math.min(state.frame, imgs.length - 1);
      syncResultControls();
      renderResult();
      setStatus(`edit #${mySeq} (${data.method.replace(/_/g, " ")}) in ${Math.round(data.timing.compute_ms)} ms`);
    } catch (err) {
      if (mySeq >= shownSeq) setStatus(err.message, true);
    } finally {
      pendingEdits--;
      updateProgress();
    }
  }

  // ------------------------------------------------------------------ drawing
  function drawImageFull(ctx, img) {
    ctx.drawImage(img, 0, 0, state.size, state.size);
  }

  function tinted(mask, color) {
    const c = newMask();
    const ctx = c.getContext("2d");
    ctx.drawImage(mask, 0, 0);
    ctx.globalCompositeOperation = "source-in";
    ctx.fillStyle = color;
    ctx.fillRect(0, 0, state.size, state.size);
    return c;
  }

  function renderRef() {
    const ctx = refCanvas.getContext("2d");
    ctx.clearRect(0, 0, state.size, state.size);
    const ref = activeRef();
    if (!ref) return;
    drawImageFull(ctx, state.images.get(ref.image).img);
    ctx.globalAlpha = 0.5;
    ctx.drawImage(tinted(ref.mask, "#ff3b30"), 0, 0);
    ctx.globalAlpha = 1;
    if (pointer && pointer.kind === "box" && pointer.current) {
      const r = boxRect(pointer.start, pointer.current);
      ctx.strokeStyle = pointer.erase ? "#ffffff" : "#ff3b30";
      ctx.lineWidth = Math.max(1, state.size / 256);
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(r.x, r.y, r.w, r.h);
      ctx.setLineDash([]);
    }
  }

  function renderOrig() {
    const ctx = origCanvas.getContext("2d");
    ctx.clearRect(0, 0, state.size, state.size);
    if (!state.original) return;
    const orig = state.images.get(state.original);
    drawImageFull(ctx, orig.img);
    if ($("#show-error").checked) {
      if (orig.errorImg) {
        drawImageFull(ctx, orig.errorImg);
      } else if (orig.error && !orig.errorLoading) {
        orig.errorLoading = true;
        loadImage(orig.error).then((img) => { orig.errorImg = img; renderOrig(); })
          .catch((err) => setStatus(err.message, true));
      }
    }
    state.refs.forEach((ref, i) => {
      // The reference's painted pixels, moved (scaled, rotated, mirrored) as the server will
      // place them: about the centre of the mask's bounding box, then by the offset.
      const box = maskBox(ref.mask);
      if (!box) return;
      const ghost = newMask();
      const g = ghost.getContext("2d");
      drawImageFull(g, state.images.get(ref.image).img);
      g.globalCompositeOperation = "destination-in";
      g.drawImage(ref.mask, 0, 0);
      const m = linear(ref);
      ctx.save();
      ctx.translate(box.cx + ref.dx, box.cy + ref.dy);
      ctx.transform(m[0], m[2], m[1], m[3], 0, 0);
      ctx.translate(-box.cx, -box.cy);
      ctx.globalAlpha = i === state.active ? 0.75 : 0.4;
      ctx.drawImage(ghost, 0, 0);
      ctx.globalAlpha = i === state.active ? 0.35 : 0.15;
      ctx.drawImage(tinted(ref.mask, "#ff9500"), 0, 0);
      ctx.restore();
      ctx.globalAlpha = 1;
      if (i === state.active) drawHandles(ctx, ref, box);
    });
  }

  // ------------------------------------------------------------------ placing a region
  // A region goes to q = centre + move + M (p - centre), with M = R(angle) . scale . F(flip)
  // (angle counter-clockwise as seen, y down) and centre that of its mask's bounding box: the
  // library's Transform (stylemapgan.editing.transform), drawn here as the server computes it.
  function maskBox(mask) {
    const data = mask.getContext("2d").getImageData(0, 0, state.size, state.size).data;
    let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
    for (let y = 0; y < state.size; y++) {
      for (let x = 0; x < state.size; x++) {
        if (data[(y * state.size + x) * 4 + 3] !== 0) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    if (x1 < 0) return null;
    x1 += 1;
    y1 += 1;
    return { x0, y0, x1, y1, cx: (x0 + x1) / 2, cy: (y0 + y1) / 2 };
  }

  function linear(ref) {
    const a = (ref.angle * Math.PI) / 180;
    const c = Math.cos(a), s = Math.sin(a);
    const fx = ref.flip === "h" ? -ref.scale : ref.scale;
    const fy = ref.flip === "v" ? -ref.scale : ref.scale;
    return [c * fx, s * fy, -s * fx, c * fy]; // [m00, m01, m10, m11]
  }

  function placed(ref, box, p) {
    const m = linear(ref);
    const x = p.x - box.cx, y = p.y - box.cy;
    return { x: box.cx + ref.dx + m[0] * x + m[1] * y, y: box.cy + ref.dy + m[2] * x + m[3] * y };
  }

  function handles(ref, box) {
    // The scale handle on the box's lower right corner, the rotation handle beyond its top.
    const centre = { x: box.cx + ref.dx, y: box.cy + ref.dy };
    const top = placed(ref, box, { x: box.cx, y: box.y0 });
    let ux = top.x - centre.x, uy = top.y - centre.y;
    const len = Math.hypot(ux, uy) || 1;
    ux /= len;
    uy /= len;
    const reach = Math.max(2, state.size / 10);
    return {
      centre, top,
      scale: placed(ref, box, { x: box.x1, y: box.y1 }),
      rotate: { x: top.x + ux * reach, y: top.y + uy * reach },
      radius: Math.max(0.8, state.size / 40),
    };
  }

  function drawHandles(ctx, ref, box) {
    const h = handles(ref, box);
    ctx.save();
    ctx.lineWidth = Math.max(0.25, state.size / 256);
    ctx.strokeStyle = "#1d2330";
    ctx.setLineDash([2 * ctx.lineWidth, 2 * ctx.lineWidth]);
    ctx.beginPath();
    const corners = [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]]
      .map(([x, y]) => placed(ref, box, { x, y }));
    corners.forEach((q, k) => (k ? ctx.lineTo(q.x, q.y) : ctx.moveTo(q.x, q.y)));
    ctx.closePath();
    ctx.moveTo(h.top.x, h.top.y);
    ctx.lineTo(h.rotate.x, h.rotate.y);
    ctx.stroke();
    ctx.setLineDash([]);
    for (const [q, fill] of [[h.scale, "#ffffff"], [h.rotate, "#2f6fde"]]) {
      ctx.beginPath();
      ctx.arc(q.x, q.y, h.radius, 0, 2 * Math.PI);
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.stroke();
    }
    ctx.restore();
  }

  function renderResult() {
    const ctx = resultCanvas.getContext("2d");
    ctx.clearRect(0, 0, state.size, state.size);
    const res = state.result;
    const png = $("#download-png");
    const json = $("#download-json");
    if (!res) {
      resultCanvas.dataset.result = "";
      $("#full-row").hidden = true;
      $("#full-view").hidden = true;
      $("#download-full").hidden = true;
      for (const a of [png, json]) {
        a.removeAttribute("href");
        a.classList.add("disabled");
        a.setAttribute("aria-disabled", "true");
      }
      return;
    }
    drawImageFull(ctx, res.imgs[state.frame]);
    const full = $("#download-full");
    const view = $("#full-view");
    $("#full-row").hidden = !res.full;
    full.hidden = !res.full;
    if (res.full) {
      full.href = res.full[state.frame];
      full.classList.remove("disabled");
      full.removeAttribute("aria-disabled");
      view.hidden = !$("#show-full").checked;
      if (!view.hidden && view.dataset.src !== res.full[state.frame]) {
        view.dataset.src = res.full[state.frame];
        view.src = res.full[state.frame];
      }
    } else {
      view.hidden = true;
    }
    resultCanvas.dataset.result = res.frames[state.frame];
    resultCanvas.dataset.seq = String(res.seq);
    png.href = res.frames[state.frame];
    png.classList.remove("disabled");
    png.removeAttribute("aria-disabled");
    json.href = res.record;
    json.classList.remove("disabled");
    json.removeAttribute("aria-disabled");
  }

  function renderAll() {
    renderTabs();
    renderRegionMenu();
    renderRef();
    renderOrig();
    renderResult();
  }

  function renderTabs() {
    const tabs = $("#ref-tabs");
    tabs.replaceChildren();
    state.refs.forEach((ref, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${i + 1}`;
      b.title = state.images.get(ref.image).name;
      b.className = i === state.active ? "active" : "";
      b.addEventListener("click", () => {
        state.active = i;
        renderAll();
      });
      tabs.append(b);
    });
    if (state.refs.length) {
      const rm = document.createElement("button");
      rm.type = "button";
      rm.textContent = "remove";
      rm.title = "Remove this reference";
      rm.addEventListener("click", () => removeReference(state.active));
      tabs.append(rm);
    } else {
      const note = document.createElement("span");
      note.className = "muted";
      note.textContent = "add a reference from the images";
      tabs.append(note);
    }
  }

  function renderLibrary() {
    const lib = $("#library");
    lib.replaceChildren();
    for (const entry of state.images.values()) {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.id = entry.id;
      const refIndex = state.refs.findIndex((r) => r.image === entry.id);
      const role = document.createElement("div");
      role.className = "role";
      if (state.original === entry.id) {
        card.classList.add("original");
        role.textContent = "original";
      } else if (refIndex >= 0) {
        card.classList.add("reference");
        role.textContent = `reference ${refIndex + 1}`;
      }
      const img = document.createElement("img");
      img.src = entry.url;
      img.alt = entry.name;
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = entry.name;
      name.title = entry.name;
      const actions = document.createElement("div");
      actions.className = "actions";
      const asOrig = document.createElement("button");
      asOrig.type = "button";
      asOrig.className = "as-original";
      asOrig.textContent = "original";
      asOrig.title = "Edit this image";
      asOrig.disabled = state.original === entry.id;
      asOrig.addEventListener("click", () => setOriginal(entry.id));
      const asRef = document.createElement("button");
      asRef.type = "button";
      asRef.className = "as-reference";
      asRef.textContent = "+ reference";
      asRef.title = "Take parts from this image";
      asRef.addEventListener("click", () => addReference(entry.id));
      actions.append(asOrig, asRef);
      card.append(img, role, name, actions);
      lib.append(card);
    }
  }

  function syncControls() {
    document.querySelectorAll('input[name="space"]').forEach((el) => {
      el.checked = el.value === state.space;
    });
    $("#steps").value = String(state.steps);
    renderLibrary();
  }

  function syncResultControls() {
    const res = state.result;
    const n = res ? res.frames.length : 1;
    $("#step-row").hidden = n <= 1;
    const slider = $("#step-slider");
    slider.max = String(n - 1);
    slider.value = String(state.frame);
    $("#step-label").textContent = n > 1 ? `t = ${(state.frame / (n - 1)).toFixed(2)}` : "t = 1";
    $("#result-info").textContent = res && n > 1 ? `step ${state.frame + 1} of ${n}` : "";
  }

  // ------------------------------------------------------------------ named regions of the reference
  // The menu lists the regions the active reference has (a gallery avatar's parts, or a face's
  // regions when it was picked from a photo with alignment on); choosing one fills it on the
  // reference's mask, as if painted, for the brush and eraser to refine.
  function regionNames(id) {
    const entry = state.images.get(id);
    if (!entry.regionNames) {
      entry.regionNames = api(`/api/images/${id}/regions`).then((d) => d.regions).catch((err) => {
        entry.regionNames = null; // ask again next time
        setStatus(err.message, true);
        return [];
      });
    }
    return entry.regionNames;
  }

  async function renderRegionMenu() {
    const menu = $("#region-menu");
    const ref = activeRef();
    const id = ref ? ref.image : "";
    if (menu.dataset.image === id) return;
    menu.dataset.image = id;
    delete menu.dataset.ready;
    const names = id ? await regionNames(id) : [];
    if (menu.dataset.image !== id) return; // another reference became active meanwhile
    const none = document.createElement("option");
    none.value = "";
    none.textContent = names.length ? "choose…" : "none";
    menu.replaceChildren(none, ...names.map((n) => {
      const o = document.createElement("option");
      o.value = n;
      o.textContent = n.replace(/_/g, " ");
      return o;
    }));
    menu.disabled = names.length === 0;
    menu.title = names.length ? `${names.length} named regions of this reference`
      : "this reference has no named regions: paint the region";
    menu.dataset.ready = "true";
  }

  async function fillRegion(name) {
    const ref = activeRef();
    if (!ref || !name) return;
    const res = await fetch(`/api/images/${ref.image}/regions/${encodeURIComponent(name)}.png`);
    if (!res.ok) {
      let detail = null;
      try {
        detail = (await res.json()).detail;
      } catch (_) {
        detail = null;
      }
      throw new Error(detail || `${res.status} ${res.statusText}`);
    }
    const bmp = await createImageBitmap(await res.blob());
    if (!state.refs.includes(ref)) return; // removed meanwhile
    const scratch = newMask();
    const sctx = scratch.getContext("2d");
    sctx.drawImage(bmp, 0, 0, state.size, state.size);
    bmp.close();
    const gray = sctx.getImageData(0, 0, state.size, state.size).data;
    pushHistory();
    const ctx = ref.mask.getContext("2d");
    const img = ctx.getImageData(0, 0, state.size, state.size);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      const a = Math.max(d[i + 3], gray[i]); // added to what is painted already
      if (a !== d[i + 3]) {
        d[i] = d[i + 1] = d[i + 2] = 255;
        d[i + 3] = a;
      }
    }
    ctx.putImageData(img, 0, 0);
    renderRef();
    renderOrig();
    requestEdit(true);
    setStatus(`filled the ${name.replace(/_/g, " ")} region: refine it with the brush and eraser`);
  }

  $("#region-menu").addEventListener("change", () => {
    const menu = $("#region-menu");
    const name = menu.value;
    menu.value = "";
    fillRegion(name).catch((err) => setStatus(err.message, true));
  });

  // ------------------------------------------------------------------ painting on the reference
  function dab(ctx, a, b, erase) {
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "#ffffff";
    ctx.lineWidth = brushSize();
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x + 0.01, b.y);
    ctx.stroke();
    ctx.globalCompositeOperation = "source-over";
  }

  function boxRect(a, b) {
    const x = Math.max(0, Math.min(a.x, b.x));
    const y = Math.max(0, Math.min(a.y, b.y));
    return { x, y, w: Math.min(state.size, Math.max(a.x, b.x)) - x, h: Math.min(state.size, Math.max(a.y, b.y)) - y };
  }

  refCanvas.addEventListener("pointerdown", (event) => {
    const ref = activeRef();
    if (!ref || event.button !== 0) return;
    event.preventDefault();
    refCanvas.setPointerCapture(event.pointerId);
    pushHistory();
    const p = canvasPoint(refCanvas, event);
    const t = tool();
    if (t === "box") {
      pointer = { kind: "box", start: p, current: p, erase: event.shiftKey };
    } else {
      pointer = { kind: "paint", last: p, erase: t === "eraser" };
      dab(ref.mask.getContext("2d"), p, p, pointer.erase);
      renderRef();
      renderOrig();
      requestEdit(false);
    }
  });

  refCanvas.addEventListener("pointermove", (event) => {
    if (!pointer || (pointer.kind !== "paint" && pointer.kind !== "box")) return;
    const p = canvasPoint(refCanvas, event);
    if (pointer.kind === "box") {
      pointer.current = p;
      renderRef();
      return;
    }
    dab(activeRef().mask.getContext("2d"), pointer.last, p, pointer.erase);
    pointer.last = p;
    renderRef();
    renderOrig();
    requestEdit(false);
  });

  function endRefGesture() {
    if (!pointer) return;
    if (pointer.kind === "box") {
      const r = boxRect(pointer.start, pointer.current);
      const ctx = activeRef().mask.getContext("2d");
      if (pointer.erase) ctx.clearRect(r.x, r.y, r.w, r.h);
      else {
        ctx.fillStyle = "#ffffff";
        ctx.fillRect(r.x, r.y, r.w, r.h);
      }
    }
    pointer = null;
    renderRef();
    renderOrig();
    requestEdit(true);
  }
  refCanvas.addEventListener("pointerup", endRefGesture);
  refCanvas.addEventListener("pointercancel", endRefGesture);

  // ------------------------------------------------------------------ moving the region on the original
  // Drag the region to move it; drag the white handle to scale it, the blue one to rotate it.
  origCanvas.addEventListener("pointerdown", (event) => {
    const ref = activeRef();
    const box = ref && maskBox(ref.mask);
    if (!box || event.button !== 0) return;
    event.preventDefault();
    origCanvas.setPointerCapture(event.pointerId);
    pushHistory();
    const p = canvasPoint(origCanvas, event);
    const h = handles(ref, box);
    const near = (q) => Math.hypot(p.x - q.x, p.y - q.y) <= 2 * h.radius;
    if (near(h.rotate)) {
      pointer = { kind: "rotate", centre: h.centre, a0: Math.atan2(p.y - h.centre.y, p.x - h.centre.x), angle0: ref.angle };
    } else if (near(h.scale)) {
      pointer = { kind: "scale", centre: h.centre, d0: Math.max(0.5, Math.hypot(p.x - h.centre.x, p.y - h.centre.y)), scale0: ref.scale };
    } else {
      pointer = { kind: "move", start: p, dx0: ref.dx, dy0: ref.dy };
    }
  });

  origCanvas.addEventListener("pointermove", (event) => {
    if (!pointer || !["move", "scale", "rotate"].includes(pointer.kind)) return;
    const p = canvasPoint(origCanvas, event);
    const ref = activeRef();
    if (pointer.kind === "move") {
      const clamp = (v) => Math.max(-state.size + 1, Math.min(state.size - 1, Math.round(v)));
      ref.dx = clamp(pointer.dx0 + p.x - pointer.start.x);
      ref.dy = clamp(pointer.dy0 + p.y - pointer.start.y);
    } else if (pointer.kind === "scale") {
      const d = Math.hypot(p.x - pointer.centre.x, p.y - pointer.centre.y);
      const s = Math.max(0.25, Math.min(4, (pointer.scale0 * d) / pointer.d0));
      ref.scale = Math.round(s * 100) / 100;
    } else {
      // Counter-clockwise as seen is a decreasing canvas angle (y points down).
      const a = Math.atan2(p.y - pointer.centre.y, p.x - pointer.centre.x);
      let deg = pointer.angle0 - ((a - pointer.a0) * 180) / Math.PI;
      deg = ((((deg + 180) % 360) + 360) % 360) - 180;
      ref.angle = Math.round(deg * 10) / 10;
    }
    renderOrig();
    requestEdit(false);
  });

  function endMove() {
    if (!pointer || !["move", "scale", "rotate"].includes(pointer.kind)) return;
    pointer = null;
    requestEdit(true);
  }
  origCanvas.addEventListener("pointerup", endMove);
  origCanvas.addEventListener("pointercancel", endMove);

  // ------------------------------------------------------------------ controls
  $("#show-error").addEventListener("change", () => renderOrig());
  $("#show-full").addEventListener("change", () => renderResult());

  $("#upload").addEventListener("change", async (event) => {
    const files = Array.from(event.target.files || []);
    event.target.value = "";
    await uploadFiles(files);
  });

  const dropZone = $("#library-panel");
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("dragover");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragover"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragover");
    uploadFiles(Array.from(event.dataTransfer.files || []));
  });

  $("#brush-size").addEventListener("input", () => {
    $("#brush-size-value").textContent = $("#brush-size").value;
  });

  $("#clear-mask").addEventListener("click", () => {
    const ref = activeRef();
    if (!ref) return;
    pushHistory();
    ref.mask.getContext("2d").clearRect(0, 0, state.size, state.size);
    renderAll();
    requestEdit(true);
  });

  $("#reset-offset").addEventListener("click", () => {
    const ref = activeRef();
    if (!ref || (ref.dx === 0 && ref.dy === 0 && ref.scale === 1 && ref.angle === 0 && ref.flip === "none")) return;
    pushHistory();
    ref.dx = ref.dy = ref.angle = 0;
    ref.scale = 1;
    ref.flip = "none";
    renderOrig();
    requestEdit(true);
  });

  function mirror() {
    const ref = activeRef();
    if (!ref) return;
    pushHistory();
    ref.flip = ref.flip === "h" ? "none" : "h";
    renderOrig();
    requestEdit(true);
  }
  $("#mirror").addEventListener("click", mirror);

  document.querySelectorAll('input[name="space"]').forEach((el) => {
    el.addEventListener("change", () => {
      pushHistory();
      state.space = el.value;
      requestEdit(true);
    });
  });

  $("#steps").addEventListener("change", () => {
    const max = state.info ? state.info.max_steps : 16;
    const v = Math.max(1, Math.min(max, Math.round(Number($("#steps").value) || 1)));
    $("#steps").value = String(v);
    if (v === state.steps) return;
    pushHistory();
    state.steps = v;
    requestEdit(true);
  });

  $("#step-slider").addEventListener("input", () => {
    state.frame = Number($("#step-slider").value);
    syncResultControls();
    renderResult();
  });

  $("#undo").addEventListener("click", undo);
  $("#redo").addEventListener("click", redo);

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type === "number") return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (mod && key === "z") {
      event.preventDefault();
      if (event.shiftKey) redo();
      else undo();
    } else if (mod && key === "y") {
      event.preventDefault();
      redo();
    } else if (!mod && (key === "[" || key === "]")) {
      const s = $("#brush-size");
      s.value = String(Number(s.value) + (key === "]" ? 1 : -1));
      $("#brush-size-value").textContent = s.value;
    } else if (!mod && key === "m") {
      mirror();
    } else if (!mod && "bex".includes(key) && key.length === 1) {
      const value = { b: "brush", e: "eraser", x: "box" }[key];
      document.querySelector(`input[name="tool"][value="${value}"]`).checked = true;
    }
  });

  // ------------------------------------------------------------------ start
  async function start() {
    try {
      const info = await api("/api/info");
      state.info = info;
      state.size = info.size;
      for (const c of [refCanvas, origCanvas, resultCanvas]) c.width = c.height = info.size;
      document.body.classList.toggle("pixelated", info.size < 128);
      const s = $("#brush-size");
      s.max = String(Math.max(2, Math.round(info.size / 4)));
      s.value = String(Math.max(1, Math.round(info.size / 16)));
      $("#brush-size-value").textContent = s.value;
      $("#steps").max = String(info.max_steps);
      $("#model-info").textContent =
        `${info.model} · ${info.size}px · stylemap ${info.stylemap.join("x")} · ${info.device}`;
      if (info.gallery !== null) {
        const gal = await api("/api/gallery");
        const box = $("#gallery");
        for (const item of gal.items) {
          const b = document.createElement("button");
          b.type = "button";
          b.className = "thumb";
          b.title = item.name;
          b.dataset.id = item.id;
          const img = document.createElement("img");
          img.loading = "lazy";
          img.src = item.thumb;
          img.alt = item.name;
          b.append(img);
          b.addEventListener("click", () => useGalleryItem(item));
          box.append(b);
        }
        $("#gallery-section").hidden = gal.items.length === 0;
      }
      renderAll();
      setStatus("upload an original and a reference to start");
      document.body.dataset.ready = "true";
    } catch (err) {
      setStatus(`cannot reach the server: ${err.message}`, true);
    }
  }

  start();
})();
