// Shared by every page: API calls carry the token the page was opened with (?token=...).
"use strict";
const TOKEN = new URLSearchParams(location.search).get("token");

async function api(path, options = {}) {
  const headers = Object.assign({"Content-Type": "application/json"}, options.headers || {});
  if (TOKEN) headers["X-Curate-Token"] = TOKEN;
  const response = await fetch(path, Object.assign({}, options, {headers}));
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
  return body;
}

// A URL for an <img> or a download: images cannot send headers, so the token rides in the query.
function withToken(path) {
  if (!TOKEN) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

// The other pages need the token too: the nav links carry it.
document.addEventListener("DOMContentLoaded", () => {
  for (const link of document.querySelectorAll("nav a")) link.href = withToken(link.getAttribute("href"));
});
