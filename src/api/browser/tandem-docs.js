// The API browser at /docs: Swagger UI (the files the binary carries) reading the OpenAPI document
// beside it, with one plugin of ours, LazyRefs.
//
// Why the plugin: when an operation is opened, Swagger UI asks swagger-client to resolve that
// operation's subtree, and swagger-client follows every $ref to the bottom. FHIR's data types refer
// to one another in circles (Extension → every value[x] type → Extension, Reference → Identifier →
// Reference, ...), so one Patient read pulls in hundreds of schemas and the page froze for minutes.
// LazyRefs resolves an opened subtree itself, in the page, inlining schemas one level deep (two
// made subtrees of 550-770 KB that took seconds to render) and leaving deeper ones as $ref (named,
// and listed in the Schemas section, which resolves the same way when opened). Parameters, request
// bodies and responses ($refs outside components/schemas) are
// always inlined: they are shallow, and "Try it out" needs them whole.
(function () {
  "use strict";

  // How many schema levels an opened operation shows inline.
  var SCHEMA_DEPTH = 1;
  var SCHEMAS = "#/components/schemas/";

  function pointer(root, ref) {
    if (ref === "#") return root;
    var node = root;
    var parts = ref.slice(2).split("/");
    for (var i = 0; i < parts.length; i++) {
      var key = decodeURIComponent(parts[i]).replace(/~1/g, "/").replace(/~0/g, "~");
      if (node === null || typeof node !== "object" || !(key in node)) return undefined;
      node = node[key];
    }
    return node;
  }

  function resolve(root, node, depth, seen) {
    if (Array.isArray(node)) {
      return node.map(function (item) { return resolve(root, item, depth, seen); });
    }
    if (node === null || typeof node !== "object") return node;
    var ref = node.$ref;
    if (typeof ref === "string" && ref.charAt(0) === "#") {
      var target = pointer(root, ref);
      if (target === undefined) return node;
      var schema = ref.indexOf(SCHEMAS) === 0;
      if (schema && (depth >= SCHEMA_DEPTH || seen.indexOf(ref) >= 0)) {
        // Left for later: the name says what it is.
        var name = ref.slice(SCHEMAS.length);
        var left = Object.assign({}, node);
        if (!left.title) left.title = name;
        return left;
      }
      var resolved = resolve(root, target, schema ? depth + 1 : depth, seen.concat([ref]));
      if (resolved === null || typeof resolved !== "object" || Array.isArray(resolved)) return resolved;
      var merged = Object.assign({}, resolved);
      Object.keys(node).forEach(function (key) {
        if (key !== "$ref") merged[key] = resolve(root, node[key], depth, seen);
      });
      // swagger-client's own mark of a resolved schema: the model's name in the view.
      if (schema) merged.$$ref = ref;
      return merged;
    }
    var out = {};
    Object.keys(node).forEach(function (key) {
      // Examples are data, not schemas: a "$ref" key inside one is part of the example.
      out[key] = key === "example" || key === "examples" ? node[key] : resolve(root, node[key], depth, seen);
    });
    return out;
  }

  function LazyRefs() {
    return {
      fn: {
        resolveSubtree: function (spec, path) {
          var node = spec;
          for (var i = 0; i < path.length && node !== undefined && node !== null; i++) node = node[path[i]];
          try {
            return Promise.resolve({ spec: resolve(spec, node, 0, []), errors: [] });
          } catch (err) {
            return Promise.resolve({ spec: node, errors: [err] });
          }
        },
      },
    };
  }

  window.addEventListener("load", function () {
    var holder = document.getElementById("swagger-ui");
    window.ui = SwaggerUIBundle({
      // Relative to the page, so that the browser works behind a path prefix.
      url: new URL(holder.getAttribute("data-spec"), window.location.href).href,
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      plugins: [SwaggerUIBundle.plugins.DownloadUrl, LazyRefs],
      layout: "StandaloneLayout",
      docExpansion: "none",
      filter: true,
      tryItOutEnabled: true,
      persistAuthorization: false,
      displayRequestDuration: true,
      syntaxHighlight: { activated: false },
    });
  });
})();
