// idc-view's page: the catalog (/api/slides), a slide in OpenSeadragon (its Deep Zoom tiles),
// and the IDC overlay drawn on a canvas above it from overlay.json (idc_engine/view/overlay.py).
//
// The overlay is the run's tile grid as a canvas of one pixel per cell (colour: the heatmap's
// colour of the cell's P(IDC), or transparent below the threshold), drawn with nearest-neighbour
// scaling onto the screen rectangle those cells cover in level-0 pixels at every frame, and
// the outlines of the IDC cells at the threshold drawn over it. Moving the threshold recolours
// the small grid canvas only: no request to the server. Cells never analysed (glass, outside
// the tissue mask) are grey when "mark tiles not analysed" is on, unreadable ones blue: both
// unlike a tile below the threshold, which is transparent.
"use strict";

const OUTLINE = "#00e676";                  // idc_engine/slides/heatmap.py THRESHOLD_COLOUR
const UNANALYSED = [110, 110, 110, 115];    // RGBA
const UNREADABLE = [33, 150, 243, 255];
const CELL_ANALYSED = 1, CELL_UNREADABLE = 2;

const state = {
  viewer: null, tracker: null, slide: null, overlay: null, threshold: 0,
  probability: null,  // Float64Array [rows * columns], NaN where not analysed
  kind: null,         // Uint8Array [rows * columns]: 0 not analysed, 1 analysed, 2 unreadable
  grid: null,         // canvas [rows, columns], one pixel per cell
  edges: [],          // IDC outline segments in cell units: [x0, y0, x1, y1, ...]
  coloured: 0,        // cells coloured at the threshold
  pinned: null,       // {col, row} clicked
};
const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return response.json();
}

function format(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function fillList(slides) {
  const body = $("slides").tBodies[0];
  body.replaceChildren();
  for (const slide of slides) {
    const row = body.insertRow();
    row.dataset.name = slide.name;
    if (slide.message) row.classList.add("broken");
    const cells = [slide.name, slide.idc_fraction === null ? "–" : (100 * slide.idc_fraction).toFixed(1) + "%",
                   format(slide.tissue_area_mm2, 2), slide.tiles === null ? "–" : slide.tiles.toLocaleString("en"),
                   format(slide.threshold, 3)];
    for (const text of cells) row.insertCell().textContent = text;
    const when = row.cells[0].appendChild(document.createElement("div"));
    when.className = "sub";
    when.textContent = `${slide.date.slice(0, 16).replace("T", " ")} · ${slide.model_name}`;
    row.title = slide.message || slide.slide;
    row.addEventListener("click", () => { location.hash = "slide=" + encodeURIComponent(slide.name); });
  }
}

function showDetails(slide) {
  const details = $("details");
  details.replaceChildren();
  const items = [["slide file", slide.slide], ["IDC", `${slide.idc_tiles} of ${slide.tiles} tiles, ` +
                 `${format(slide.idc_area_mm2, 2)} of ${format(slide.tissue_area_mm2, 2)} mm²`],
                 ["threshold", `${slide.threshold} (${slide.threshold_source})`],
                 ["model", slide.model], ["date", slide.date],
                 ["size", slide.dimensions ? `${slide.dimensions.join(" x ")} px at ${slide.um_per_pixel} µm/px` : "–"]];
  for (const [term, text] of items) {
    details.appendChild(document.createElement("dt")).textContent = term;
    details.appendChild(document.createElement("dd")).textContent = text;
  }
}

async function openSlide(slide) {
  state.slide = slide;
  for (const row of $("slides").tBodies[0].rows) row.classList.toggle("selected", row.dataset.name === slide.name);
  showDetails(slide);
  $("message").textContent = slide.message;
  if (state.tracker) { state.tracker.destroy(); state.tracker = null; }
  if (state.viewer) { state.viewer.destroy(); state.viewer = null; }
  state.overlay = null;
  state.pinned = null;
  $("readout").textContent = "";
  const viewable = Boolean(slide.dzi);
  $("heatmap").hidden = viewable;
  $("viewer").hidden = !viewable;
  for (const id of ["legend", "scale-bar", "toolbar"]) $(id).hidden = !viewable;
  if (!viewable) { $("heatmap").src = slide.heatmap; return; }
  state.overlay = await getJSON(slide.overlay);
  prepareCells(state.overlay);
  setThreshold(state.overlay.threshold);
  $("exported-threshold").replaceChildren(new Option("", String(state.overlay.threshold)));
  drawColourBar();
  makeViewer(slide);
}

function makeViewer(slide) {
  const viewer = OpenSeadragon({
    element: $("viewer"), prefixUrl: "/static/vendor/openseadragon/images/", tileSources: slide.dzi,
    drawer: "canvas", showNavigator: false, maxZoomPixelRatio: 4, visibilityRatio: 0.5,
    imageLoaderLimit: 6, timeout: 60000, gestureSettingsMouse: { clickToZoom: false },
  });
  state.viewer = viewer;
  const canvas = document.createElement("canvas");
  canvas.id = "overlay";
  viewer.canvas.appendChild(canvas);
  viewer.addHandler("update-viewport", drawOverlay);
  viewer.addHandler("resize", drawOverlay);
  viewer.addHandler("open", drawOverlay);
  viewer.addHandler("open-failed", (event) => { $("message").textContent = `the slide did not open: ${event.message}`; });
  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick) return;
    state.pinned = cellAt(event.position);
    showReadout(state.pinned);
    drawOverlay();
  });
  state.tracker = new OpenSeadragon.MouseTracker({
    element: viewer.canvas,
    moveHandler: (event) => showReadout(cellAt(event.position)),
    leaveHandler: () => showReadout(state.pinned),
  });
  state.tracker.setTracking(true);
}

function prepareCells(overlay) {
  const size = overlay.columns * overlay.rows;
  state.probability = new Float64Array(size).fill(NaN);
  state.kind = new Uint8Array(size);
  overlay.col.forEach((col, i) => {
    const cell = overlay.row[i] * overlay.columns + col;
    state.probability[cell] = overlay.p[i];
    state.kind[cell] = CELL_ANALYSED;
  });
  overlay.unreadable_col.forEach((col, i) => {
    state.kind[overlay.unreadable_row[i] * overlay.columns + col] = CELL_UNREADABLE;
  });
  state.grid = document.createElement("canvas");
  state.grid.width = overlay.columns;
  state.grid.height = overlay.rows;
}

function isIdc(col, row) {
  const overlay = state.overlay;
  if (col < 0 || row < 0 || col >= overlay.columns || row >= overlay.rows) return false;
  return state.probability[row * overlay.columns + col] >= state.threshold;  // NaN: false
}

// Colours the grid canvas at state.threshold, counts the coloured cells, finds the outlines.
function recolour() {
  const { columns, rows, colours } = state.overlay;
  const image = new ImageData(columns, rows);
  const mark = $("mark-unanalysed").checked;
  const edges = [];
  let coloured = 0;
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < columns; col++) {
      const cell = row * columns + col;
      let rgba = null;
      if (state.kind[cell] === CELL_ANALYSED) {
        if (isIdc(col, row)) {
          const p = state.probability[cell];
          rgba = [...colours[Math.min(255, Math.floor(p * 256))], 255];
          coloured++;
          if (!isIdc(col, row - 1)) edges.push(col, row, col + 1, row);
          if (!isIdc(col, row + 1)) edges.push(col, row + 1, col + 1, row + 1);
          if (!isIdc(col - 1, row)) edges.push(col, row, col, row + 1);
          if (!isIdc(col + 1, row)) edges.push(col + 1, row, col + 1, row + 1);
        }
      } else if (state.kind[cell] === CELL_UNREADABLE) {
        rgba = UNREADABLE;
      } else if (mark) {
        rgba = UNANALYSED;
      }
      if (rgba) image.data.set(rgba, 4 * cell);
    }
  }
  state.grid.getContext("2d").putImageData(image, 0, 0);
  state.edges = edges;
  state.coloured = coloured;
  $("count").textContent = `${coloured.toLocaleString("en")} of ${state.overlay.p.length.toLocaleString("en")} ` +
                           `analysed tiles at or above the threshold`;
}

function setThreshold(value) {
  state.threshold = value;
  $("threshold").value = String(value);
  $("threshold-value").textContent = value.toFixed(3);
  if (state.overlay) {
    recolour();
    drawColourBar();
    drawOverlay();
  }
}

// The overlay canvas: the grid's visible cells scaled onto their screen rectangle, outlines.
function drawOverlay() {
  const viewer = state.viewer, overlay = state.overlay;
  const canvas = viewer && document.getElementById("overlay");
  if (!canvas || !overlay || !viewer.world.getItemCount()) return;
  const ratio = window.devicePixelRatio || 1;
  const width = viewer.canvas.clientWidth, height = viewer.canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
  }
  const context = canvas.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, canvas.width, canvas.height);
  drawScaleBar();
  if (!$("overlay-on").checked) return;
  const origin = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
  const unit = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(overlay.cell, overlay.cell));
  const cellWidth = unit.x - origin.x, cellHeight = unit.y - origin.y;
  const col0 = Math.max(0, Math.floor(-origin.x / cellWidth)), row0 = Math.max(0, Math.floor(-origin.y / cellHeight));
  const col1 = Math.min(overlay.columns, Math.ceil((width - origin.x) / cellWidth));
  const row1 = Math.min(overlay.rows, Math.ceil((height - origin.y) / cellHeight));
  context.scale(ratio, ratio);
  if (col1 > col0 && row1 > row0) {
    context.imageSmoothingEnabled = false;
    context.globalAlpha = Number($("opacity").value);
    context.drawImage(state.grid, col0, row0, col1 - col0, row1 - row0, origin.x + col0 * cellWidth,
                      origin.y + row0 * cellHeight, (col1 - col0) * cellWidth, (row1 - row0) * cellHeight);
  }
  context.globalAlpha = 1;
  context.strokeStyle = OUTLINE;
  context.lineWidth = 1.5;
  context.beginPath();
  const edges = state.edges;
  for (let i = 0; i < edges.length; i += 4) {
    context.moveTo(origin.x + edges[i] * cellWidth, origin.y + edges[i + 1] * cellHeight);
    context.lineTo(origin.x + edges[i + 2] * cellWidth, origin.y + edges[i + 3] * cellHeight);
  }
  context.stroke();
  if (state.pinned) {
    context.strokeStyle = "#2962ff";
    context.lineWidth = 2;
    context.strokeRect(origin.x + state.pinned.col * cellWidth, origin.y + state.pinned.row * cellHeight,
                       cellWidth, cellHeight);
  }
}

function cellAt(position) {
  const overlay = state.overlay;
  if (!overlay || !state.viewer) return null;
  const image = state.viewer.viewport.viewerElementToImageCoordinates(position);
  const col = Math.floor(image.x / overlay.cell), row = Math.floor(image.y / overlay.cell);
  if (col < 0 || row < 0 || col >= overlay.columns || row >= overlay.rows) return null;
  return { col, row, x: image.x, y: image.y };
}

function showReadout(cell) {
  if (!cell) { $("readout").textContent = ""; return; }
  const overlay = state.overlay, index = cell.row * overlay.columns + cell.col;
  const um = state.slide.um_per_pixel;
  const left = Math.round(cell.col * overlay.cell), top = Math.round(cell.row * overlay.cell);
  let what = "not analysed (glass, or outside the tissue mask)";
  if (state.kind[index] === CELL_UNREADABLE) what = "unreadable (OpenSlide could not decode it)";
  if (state.kind[index] === CELL_ANALYSED) {
    const p = state.probability[index];
    what = `P(IDC) ${p.toFixed(4)}: ${p >= state.threshold ? "IDC" : "not IDC"} at ${state.threshold.toFixed(3)}`;
  }
  $("readout").textContent = `tile (${cell.col}, ${cell.row}), level-0 x ${left}, y ${top} px ` +
    `(${(left * um / 1000).toFixed(2)}, ${(top * um / 1000).toFixed(2)} mm): ${what}`;
}

function drawScaleBar() {
  const viewer = state.viewer, um = state.slide && state.slide.um_per_pixel;
  if (!viewer || !um || !viewer.world.getItemCount()) return;
  const screenPerImage = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
  const umPerScreen = um / screenPerImage;
  const wanted = 150 * umPerScreen, power = Math.pow(10, Math.floor(Math.log10(wanted)));
  const length = [5, 2, 1].map((m) => m * power).find((v) => v <= wanted) || power;
  $("scale-bar-line").style.width = (length / umPerScreen).toFixed(1) + "px";
  $("scale-bar-label").textContent = length >= 1000 ? `${length / 1000} mm` : `${length} µm`;
}

function drawColourBar() {
  const canvas = $("colour-bar"), context = canvas.getContext("2d"), overlay = state.overlay;
  for (let i = 0; i < 256; i++) {
    context.fillStyle = `rgb(${overlay.colours[i].join(",")})`;
    context.fillRect(i, 0, 1, canvas.height);
  }
  context.fillStyle = OUTLINE;
  context.fillRect(Math.round(state.threshold * 255) - 1, 0, 3, canvas.height);
  context.fillStyle = "#000";
  context.fillRect(Math.round(overlay.threshold * 255), 0, 1, canvas.height);
  $("legend-text").textContent = `P(IDC) 0 – 1; threshold ${state.threshold.toFixed(3)} ` +
    `(green; exported ${overlay.threshold.toFixed(3)}, black)`;
}

async function showFromHash(slides) {
  const found = /slide=([^&]*)/.exec(location.hash);
  const name = found ? decodeURIComponent(found[1]) : "";
  const slide = slides.find((s) => s.name === name) || slides.find((s) => !s.message) || slides[0];
  if (slide && slide !== state.slide) await openSlide(slide);
}

async function main() {
  const slides = await getJSON("/api/slides");
  fillList(slides);
  $("threshold").addEventListener("input", (event) => setThreshold(Number(event.target.value)));
  $("reset-threshold").addEventListener("click", () => setThreshold(state.overlay.threshold));
  $("opacity").addEventListener("input", drawOverlay);
  $("overlay-on").addEventListener("change", drawOverlay);
  $("mark-unanalysed").addEventListener("change", () => { recolour(); drawOverlay(); });
  window.addEventListener("hashchange", () => showFromHash(slides));
  await showFromHash(slides);
}

main().catch((error) => { $("message").textContent = String(error); console.error(error); });
