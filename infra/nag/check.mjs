#!/usr/bin/env node
// cdk-nag's rule packs (AwsSolutions and NIST 800-53 rev 5 by default) over a synthesized CloudFormation template.
//
//   node check.mjs [--packs AwsSolutions,NIST.800.53.R5] <template.json>...
//
// Both packs run on the same included stack in one synthesis. Findings, acknowledgements and the summary are reported
// per pack (a rule id starts with its pack's name: AwsSolutions-IAM5, NIST.800.53.R5-IAMNoInlinePolicy). An
// acknowledgement for a pack that was not selected is neither applied nor checked for staleness; one whose rule id
// names no known pack is a problem.
//
// The template is loaded into a Stack with CfnInclude (logical ids and resource Metadata preserved), so cdk-nag's
// rules see the same L1 resources the C# app synthesized, and cdk-nag honours the acknowledgements the app wrote as
// Metadata {"cdk_nag": {"rules_to_suppress": [{id, reason, applies_to?}]}} on the resources they concern.
//
// Exit code 0 only when every rule passed or was acknowledged, no rule failed to evaluate, aws-cdk-lib's CloudFormation
// schema validation of the included template found nothing, every acknowledgement has
// a reason of at least MIN_REASON characters, and every acknowledgement (and each of its applies_to entries) matched
// a finding (a stale one hides future findings). Otherwise 1, with each problem printed. 2 for usage errors.
// cfn-lint warnings (W*) and notes (I*) from that schema validation are printed but do not fail the check.
// Each template ends with a line "NAG-RESULT <json>" for programs (the xUnit tests); the exit code covers them all.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { App, Aspects, LegacyStackSynthesizer, Stack } = require('aws-cdk-lib');
const { CfnInclude } = require('aws-cdk-lib/cloudformation-include');
const { AwsSolutionsChecks, NIST80053R5Checks } = require('cdk-nag');

export const MIN_REASON = 40;

/** The packs this check knows, by the prefix of their rule ids. */
const PACKS = { AwsSolutions: AwsSolutionsChecks, 'NIST.800.53.R5': NIST80053R5Checks };
const packOf = (ruleId) => Object.keys(PACKS).find((p) => ruleId.startsWith(p + '-'));

const usage = () => {
  console.error(`usage: node check.mjs [--packs ${Object.keys(PACKS).join(',')}] <template.json>...`);
  process.exit(2);
};
const args = process.argv.slice(2);
let packs = Object.keys(PACKS);
const packsAt = args.indexOf('--packs');
if (packsAt >= 0) {
  packs = (args[packsAt + 1] ?? '').split(',').map((p) => p.trim()).filter((p) => p.length > 0);
  if (packs.length === 0 || packs.some((p) => !(p in PACKS))) usage();
  args.splice(packsAt, 2);
}
const templatePaths = args;
if (templatePaths.length === 0 || templatePaths.some((p) => !fs.existsSync(p))) usage();

let allOk = true;
for (const templatePath of templatePaths) {
  if (templatePaths.length > 1) console.log(`== ${templatePath}`);
  allOk = checkTemplate(templatePath) && allOk;
}
process.exit(allOk ? 0 : 1);

function checkTemplate(templatePath) {
  const template = JSON.parse(fs.readFileSync(templatePath, 'utf8'));
  const resources = template.Resources ?? {};

  // 1. The acknowledgements as written, checked before cdk-nag sees them.
  const problems = [];
  const acknowledgements = [];
  for (const [logicalId, resource] of Object.entries(resources)) {
    const meta = resource.Metadata?.cdk_nag;
    if (meta === undefined) continue;
    const rules = meta.rules_to_suppress;
    if (!Array.isArray(rules) || rules.length === 0) {
      problems.push(`${logicalId}: Metadata.cdk_nag has no rules_to_suppress list`);
      continue;
    }
    for (const rule of rules) {
      const id = typeof rule?.id === 'string' ? rule.id : '';
      let reason = typeof rule?.reason === 'string' ? rule.reason : '';
      if (rule?.is_reason_encoded) reason = Buffer.from(reason, 'base64').toString();
      if (!/^[A-Za-z0-9.]+-[A-Za-z0-9]+$/.test(id)) problems.push(`${logicalId}: acknowledgement with a bad rule id '${id}'`);
      else if (packOf(id) === undefined) problems.push(`${logicalId}: acknowledgement of ${id} names no known pack (${Object.keys(PACKS).join(', ')})`);
      if (reason.trim().length < MIN_REASON) {
        problems.push(`${logicalId}: acknowledgement of ${id || '?'} has no reason of at least ${MIN_REASON} characters ('${reason.trim()}')`);
      }
      const appliesTo = rule?.applies_to;
      if (appliesTo !== undefined && (!Array.isArray(appliesTo) || appliesTo.length === 0)) {
        problems.push(`${logicalId}: acknowledgement of ${id} has an empty or malformed applies_to`);
      }
      acknowledgements.push({ logicalId, id, reason: reason.trim(), appliesTo: Array.isArray(appliesTo) ? appliesTo : undefined });
    }
  }

  // 2. cdk-nag over the included template, collecting every outcome.
  const outcomes = { compliant: {}, notApplicable: 0, findings: [], suppressed: [], errors: [], schema: [], schemaNotes: [] };
  const logicalIdOf = (resource) => resource.node.id;
  const logger = {
    onCompliance: (d) => { const p = packOf(d.ruleId); outcomes.compliant[p] = (outcomes.compliant[p] ?? 0) + 1; },
    onNotApplicable: () => { outcomes.notApplicable++; },
    onNonCompliance: (d) => outcomes.findings.push({ pack: packOf(d.ruleId), logicalId: logicalIdOf(d.resource), type: d.resource.cfnResourceType, ruleId: d.ruleId, findingId: d.findingId, level: d.ruleLevel, info: d.ruleInfo }),
    onSuppressed: (d) => outcomes.suppressed.push({ pack: packOf(d.ruleId), logicalId: logicalIdOf(d.resource), ruleId: d.ruleId, findingId: d.findingId, reason: d.suppressionReason }),
    onError: (d) => outcomes.errors.push({ pack: packOf(d.ruleId), logicalId: logicalIdOf(d.resource), type: d.resource.cfnResourceType, ruleId: d.ruleId, message: d.errorMessage }),
    onSuppressedError: (d) => outcomes.suppressed.push({ pack: packOf(d.ruleId), logicalId: logicalIdOf(d.resource), ruleId: d.ruleId, findingId: '', reason: d.errorSuppressionReason }),
  };

  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'bastiontools-nag-'));
  try {
    const app = new App({ outdir });
    // The legacy synthesizer adds no BootstrapVersion parameter of its own (the included template has one).
    const stack = new Stack(app, 'Checked', { synthesizer: new LegacyStackSynthesizer() });
    new CfnInclude(stack, 'Template', { templateFile: templatePath, preserveLogicalIds: true });
    for (const pack of packs) Aspects.of(app).add(new PACKS[pack]({ verbose: true, reports: false, additionalLoggers: [logger] }));
    app.synth();
    // aws-cdk-lib also checks the template against the CloudFormation schema (cfn-lint rules); its findings count too.
    const reportPath = path.join(outdir, 'validation-report.json');
    if (fs.existsSync(reportPath)) {
      const report = JSON.parse(fs.readFileSync(reportPath, 'utf8'));
      for (const plugin of report.pluginReports ?? []) {
        for (const v of plugin.violations ?? []) {
          for (const c of v.violatingConstructs ?? []) {
            const entry = { logicalId: c.cloudFormationResource?.logicalId ?? c.constructPath, ruleId: `${plugin.pluginName} ${v.ruleName}`, info: v.description };
            // cfn-lint's W (warning) and I (informational) rules are printed, not failed: W3010 "hardcoded
            // availability zone" is what any CDK stack with a fixed account/region synthesizes.
            (/^[WI]\d/.test(v.ruleName) ? outcomes.schemaNotes : outcomes.schema).push(entry);
          }
        }
      }
    }
  } catch (err) {
    problems.push(`cdk-nag could not run: ${err.message}`);
  } finally {
    fs.rmSync(outdir, { recursive: true, force: true });
  }

  // 3. Acknowledgements that acknowledged nothing.
  const matches = (entry, findingId) => (typeof entry === 'string'
    ? entry === findingId
    : (() => { const m = /\/(.*)\/(.*)?/.exec(entry?.regex ?? ''); return !!m && new RegExp(m[1], m[2] || '').test(findingId); })());
  for (const ack of acknowledgements) {
    if (!packs.includes(packOf(ack.id))) continue;
    const used = outcomes.suppressed.filter((s) => s.logicalId === ack.logicalId && s.ruleId === ack.id);
    if (used.length === 0) {
      problems.push(`${ack.logicalId}: acknowledgement of ${ack.id} matches no finding (stale)`);
      continue;
    }
    for (const entry of ack.appliesTo ?? []) {
      if (!used.some((s) => matches(entry, s.findingId))) {
        problems.push(`${ack.logicalId}: ${ack.id} applies_to entry ${JSON.stringify(entry)} matches no finding (stale)`);
      }
    }
  }

  const checkedResources = Object.keys(resources).length;
  for (const pack of packs) {
    const evaluated = (outcomes.compliant[pack] ?? 0) + [...outcomes.findings, ...outcomes.suppressed].filter((o) => o.pack === pack).length;
    if (evaluated === 0) problems.push(`no ${pack} rule evaluated any resource: the check did not run`);
  }

  for (const f of outcomes.findings) {
    console.log(`FINDING ${f.level} ${f.ruleId}${f.findingId ? `[${f.findingId}]` : ''} on ${f.logicalId} (${f.type}): ${f.info}`);
  }
  for (const e of outcomes.errors) {
    console.log(`RULE-ERROR ${e.ruleId} on ${e.logicalId} (${e.type}): ${e.message}`);
  }
  for (const v of outcomes.schema) console.log(`SCHEMA ${v.ruleId} on ${v.logicalId}: ${v.info}`);
  for (const v of outcomes.schemaNotes) console.log(`schema note ${v.ruleId} on ${v.logicalId}: ${v.info}`);
  for (const p of problems) console.log(`ACK-PROBLEM ${p}`);
  for (const s of outcomes.suppressed) {
    console.log(`acknowledged ${s.ruleId}${s.findingId ? `[${s.findingId}]` : ''} on ${s.logicalId}: ${s.reason}`);
  }
  const ok = outcomes.findings.length === 0 && outcomes.errors.length === 0 && outcomes.schema.length === 0 && problems.length === 0;
  const ofPack = (list, pack) => list.filter((o) => o.pack === pack).length;
  for (const pack of packs) {
    console.log(`cdk-nag ${pack} on ${path.basename(templatePath)}: ${outcomes.compliant[pack] ?? 0} compliant checks, `
      + `${ofPack(outcomes.findings, pack)} unacknowledged findings, ${ofPack(outcomes.errors, pack)} rule errors, ${ofPack(outcomes.suppressed, pack)} acknowledged`);
  }
  console.log(`cdk-nag ${packs.join(' + ')} on ${path.basename(templatePath)}: ${checkedResources} resources, `
    + `${outcomes.findings.length} unacknowledged findings, ${outcomes.errors.length} rule errors, ${outcomes.schema.length} schema findings, ${outcomes.suppressed.length} acknowledged, `
    + `${problems.length} acknowledgement problems: ${ok ? 'PASS' : 'FAIL'}`);
  console.log('NAG-RESULT ' + JSON.stringify({
    ok,
    template: templatePath,
    packs,
    resources: checkedResources,
    compliant: Object.values(outcomes.compliant).reduce((a, b) => a + b, 0),
    compliantByPack: outcomes.compliant,
    findings: outcomes.findings.map((f) => ({ pack: f.pack, ruleId: f.ruleId, findingId: f.findingId, logicalId: f.logicalId, level: f.level })),
    errors: outcomes.errors.map((e) => ({ pack: e.pack, ruleId: e.ruleId, logicalId: e.logicalId })),
    schema: outcomes.schema.map((v) => ({ ruleId: v.ruleId, logicalId: v.logicalId })),
    acknowledged: outcomes.suppressed.map((s) => ({ pack: s.pack, ruleId: s.ruleId, findingId: s.findingId, logicalId: s.logicalId })),
    problems,
  }));
  return ok;
}

