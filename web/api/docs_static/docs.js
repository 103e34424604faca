// Starts Swagger UI on /docs (web/api/docs.py). A file of its own, not an inline script: the
// page's Content-Security-Policy runs only this server's scripts.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    urls: [
      { url: "/v1/openapi.json", name: "Paddock v1 API" },
      { url: "/openapi.json", name: "E2B-compatible API" },
    ],
    "urls.primaryName": "Paddock v1 API",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    // Swagger UI would otherwise send each document to validator.swagger.io.
    validatorUrl: null,
    // The key typed into Authorize lives in this page's memory only.
    persistAuthorization: false,
    deepLinking: false,
    displayRequestDuration: true,
  });
});
