#!/usr/bin/env python3
"""Writes src/fhir/r4-elements.json: the R4 element definitions of the resources tandem serves
(names, types, cardinality, short definitions), read from fhirbolt-model's R4 model, which
fhirbolt-codegen generated from the official hl7.fhir.r4.core 4.0.1 StructureDefinitions.

The server uses the table to check primitive formats (a date is a date) and required code bindings,
and to describe its resources in the OpenAPI document. Usage:

    python3 .ci/gen_r4_elements.py            # rewrite the table
    python3 .ci/gen_r4_elements.py --check    # fail if the committed table differs (CI)

fhirbolt-model's sources are found with `cargo metadata` (the crate the build already uses).
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src", "fhir", "r4-elements.json")

# The resources whose definitions the table holds: the hosted types and what the API answers with.
ROOTS = [
    "Appointment", "CareTeam", "Consent", "Group", "Location", "Organization", "Patient",
    "Practitioner", "PractitionerRole", "Subscription", "Encounter", "DocumentReference",
    "Observation", "Questionnaire", "QuestionnaireResponse", "Schedule", "Slot",
    "AuditEvent", "Binary", "Bundle", "CapabilityStatement", "OperationOutcome", "Parameters",
]

# fhirbolt keeps every repeating element in a Vec, whatever its minimum; these are 1..* in R4.
AT_LEAST_ONE = {
    "Appointment.participant", "Consent.category", "OperationOutcome.issue", "AuditEvent.agent",
    "CapabilityStatement.format", "CapabilityStatement.rest.resource.type", "DocumentReference.content",
    "Schedule.actor",
}

# Codes of the required bindings of the elements tandem's users write and read most
# (R4 valuesets; a code outside them is refused).
REQUIRED_CODES = {
    "Appointment.status": "proposed pending booked arrived fulfilled cancelled noshow entered-in-error checked-in waitlist",
    "Appointment.participant.required": "required optional information-only",
    "Appointment.participant.status": "accepted declined tentative needs-action",
    "CareTeam.status": "proposed active suspended inactive entered-in-error",
    "Consent.status": "draft proposed active rejected inactive entered-in-error",
    "Consent.provision.type": "deny permit",
    "Consent.provision.data.meaning": "instance related dependents authoredby",
    "Group.type": "person animal practitioner device medication substance",
    "Patient.gender": "male female other unknown",
    "Patient.link.type": "replaced-by replaces refer seealso",
    "Practitioner.gender": "male female other unknown",
    "Location.status": "active suspended inactive",
    "Location.mode": "instance kind",
    "Subscription.status": "requested active error off",
    "Encounter.status": "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown",
    "DocumentReference.status": "current superseded entered-in-error",
    "DocumentReference.docStatus": "preliminary final amended entered-in-error",
    "DocumentReference.relatesTo.code": "replaces transforms signs appends",
    "Slot.status": "busy free busy-unavailable busy-tentative entered-in-error",
    "Observation.status": "registered preliminary final amended corrected cancelled entered-in-error unknown",
    "Questionnaire.status": "draft active retired unknown",
    "Questionnaire.item.type": "group display boolean decimal integer date dateTime time string text url choice open-choice attachment reference quantity",
    "Questionnaire.item.enableWhen.operator": "exists = != > < >= <=",
    "Questionnaire.item.enableBehavior": "all any",
    "QuestionnaireResponse.status": "in-progress completed amended entered-in-error stopped",
    "Subscription.channel.type": "rest-hook websocket email sms message",
    "ContactPoint.system": "phone fax email pager url sms other",
    "ContactPoint.use": "home work temp old mobile",
    "HumanName.use": "usual official temp nickname anonymous old maiden",
    "Address.use": "home work temp old billing",
    "Address.type": "postal physical both",
    "Identifier.use": "usual official temp secondary old",
    "Narrative.status": "generated extensions additional empty",
    "Quantity.comparator": "< <= >= >",
    "Bundle.type": "document message transaction transaction-response batch batch-response history searchset collection",
    "Bundle.entry.search.mode": "match include outcome",
    "Bundle.entry.request.method": "GET HEAD POST PUT DELETE PATCH",
    "OperationOutcome.issue.severity": "fatal error warning information",
    "AuditEvent.action": "C R U D E",
    "AuditEvent.outcome": "0 4 8 12",
}

PRIMITIVES = {
    "Base64Binary": "base64Binary", "Boolean": "boolean", "Canonical": "canonical", "Code": "code",
    "Date": "date", "DateTime": "dateTime", "Decimal": "decimal", "Id": "id", "Instant": "instant",
    "Integer": "integer", "Markdown": "markdown", "Oid": "oid", "PositiveInt": "positiveInt",
    "String": "string", "Time": "time", "UnsignedInt": "unsignedInt", "Uri": "uri", "Url": "url",
    "Uuid": "uuid", "Xhtml": "xhtml",
}


def model_dir():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", "x86_64-unknown-linux-gnu"], cwd=ROOT))
    for p in meta["packages"]:
        if p["name"] == "fhirbolt-model":
            return os.path.join(os.path.dirname(p["manifest_path"]), "src", "generated", "r4"), p["version"]
    sys.exit("fhirbolt-model is not a dependency")


STRUCT = re.compile(r'#\[doc = "((?:[^"\\]|\\.)*)"\]\s*#\[derive[^\]]*\]\s*pub (struct|enum) (\w+) \{(.*?)\n\}', re.S)
FIELD = re.compile(r'#\[doc = "((?:[^"\\]|\\.)*)"\]\s*pub r#(\w+): ([^\n]+),')
VARIANT = re.compile(r'^\s*(\w+)\(([^\n]+)\),$', re.M)


def unescape(s):
    return s.encode().decode("unicode_escape").encode("latin-1").decode("utf-8")


def short(doc):
    doc = unescape(doc).strip()
    m = re.match(r"(.+?\.)(\s|$)", doc)
    return m.group(1) if m else doc


def parse_type(t):
    """(card, type name) from a Rust field type."""
    t = t.strip()
    card = "1"
    if t.startswith("Option<"):
        card, t = "0..1", t[len("Option<"):-1]
    elif t.startswith("Vec<"):
        card, t = "0..*", t[len("Vec<"):-1]
    if t.startswith("Box<"):
        t = t[len("Box<"):-1]
    name = t.split("::")[-1]
    if t == "std::string::String":
        name = "string"
    elif name in PRIMITIVES and "types::" in t:
        name = PRIMITIVES[name]
    return card, name


def camel(snake):
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def load_all(base):
    structs, enums = {}, {}
    for sub in ("resources", "types"):
        d = os.path.join(base, sub)
        for f in sorted(os.listdir(d)):
            text = open(os.path.join(d, f)).read()
            for doc, kind, name, body in STRUCT.findall(text):
                if kind == "struct":
                    structs[name] = (sub, short(doc), FIELD.findall(body))
                else:
                    enums[name] = [(v, parse_type(t)[1]) for v, t in VARIANT.findall(body) if v != "Invalid"]
    return structs, enums


def main():
    base, version = model_dir()
    structs, enums = load_all(base)
    out = {}
    paths = {}  # struct name -> FHIR path (Appointment.participant)
    queue = [(r, r) for r in ROOTS]
    while queue:
        name, path = queue.pop(0)
        if name in out:
            continue
        sub, doc, fields = structs[name]
        kind = "resource" if name in ROOTS else ("backbone" if sub == "resources" else "datatype")
        elements = []
        for fdoc, fname, ftype in fields:
            card, tname = parse_type(ftype)
            el_path = f"{path}.{camel(fname)}"
            element = {"name": camel(fname), "min": 1 if card == "1" else 0,
                       "max": "*" if card == "0..*" else "1", "doc": short(fdoc)}
            if el_path in AT_LEAST_ONE:
                element["min"] = 1
            if tname in enums:
                element["choice"] = [{"suffix": v, "type": t} for v, t in enums[tname]]
                for _, t in enums[tname]:
                    if t in structs and t not in PRIMITIVES.values():
                        queue.append((t, t))
            else:
                element["type"] = tname
                if tname in structs:
                    child_path = el_path if structs[tname][0] == "resources" and tname not in ROOTS and tname != "Resource" else tname
                    queue.append((tname, child_path))
            codes = REQUIRED_CODES.get(el_path) or REQUIRED_CODES.get(f"{name}.{camel(fname)}")
            if codes:
                element["codes"] = codes.split(" ")
            elements.append(element)
        out[name] = {"kind": kind, "path": path, "doc": doc, "elements": elements}
    table = {
        "source": f"fhirbolt-model {version}: the R4 model fhirbolt-codegen generated from hl7.fhir.r4.core 4.0.1",
        "types": out,
    }
    text = json.dumps(table, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        if open(OUT).read() != text:
            sys.exit(f"{OUT} differs from what .ci/gen_r4_elements.py generates; run it and commit the result")
        print(f"{OUT} is current ({len(out)} types)")
        return
    open(OUT, "w").write(text)
    print(f"wrote {OUT}: {len(out)} types")


main()
