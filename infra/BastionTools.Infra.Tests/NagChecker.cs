using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace BastionTools.Infra.Tests
{
    /// <summary>
    /// Runs infra/nag/check.mjs (cdk-nag's AwsSolutions and NIST 800-53 rev 5 packs through CfnInclude) with Node. When infra/nag/node_modules
    /// is missing it runs 'npm ci' there first (from package-lock.json; npm's cache may serve it offline); when Node or
    /// npm is missing, or npm ci fails, the tests that need it fail with that message: nothing is skipped.
    /// </summary>
    public sealed class NagChecker
    {
        private readonly Lazy<string?> _setupError;

        public NagChecker()
        {
            NagDirectory = FindNagDirectory();
            _setupError = new Lazy<string?>(EnsureInstalled);
        }

        public string NagDirectory { get; }

        public const string AwsSolutions = "AwsSolutions";
        public const string Nist80053R5 = "NIST.800.53.R5";

        /// <summary>Checks <paramref name="templatePath"/> with <paramref name="packs"/> (none given: check.mjs's default, both).</summary>
        public NagResult Check(string templatePath, params string[] packs)
        {
            var error = _setupError.Value;
            if (error != null) throw new InvalidOperationException(error);
            var args = new System.Collections.Generic.List<string> { "check.mjs" };
            if (packs.Length > 0) args.AddRange(new[] { "--packs", string.Join(",", packs) });
            args.Add(templatePath);
            var (code, output) = Run("node", NagDirectory, args.ToArray());
            var line = output.Split('\n').Select(l => l.TrimEnd('\r')).LastOrDefault(l => l.StartsWith("NAG-RESULT ", StringComparison.Ordinal));
            if (line == null) throw new InvalidOperationException($"check.mjs printed no NAG-RESULT line (exit code {code}):\n{output}");
            return new NagResult(code, output, JsonDocument.Parse(line["NAG-RESULT ".Length..]).RootElement.Clone());
        }

        private string? EnsureInstalled()
        {
            if (File.Exists(Path.Combine(NagDirectory, "node_modules", "cdk-nag", "package.json"))
                && File.Exists(Path.Combine(NagDirectory, "node_modules", "aws-cdk-lib", "package.json")))
            {
                return null;
            }
            try
            {
                var npm = OperatingSystem.IsWindows() ? "npm.cmd" : "npm";
                var (code, output) = Run(npm, NagDirectory, "ci", "--no-audit", "--no-fund", "--prefer-offline");
                return code == 0 ? null : $"'npm ci' in {NagDirectory} failed with exit code {code}:\n{output}";
            }
            catch (System.ComponentModel.Win32Exception ex)
            {
                return $"infra/nag needs Node.js 20+ and npm on PATH ({ex.Message}); then 'npm ci' in {NagDirectory}.";
            }
        }

        private static (int Code, string Output) Run(string file, string directory, params string[] args)
        {
            var psi = new ProcessStartInfo(file)
            {
                WorkingDirectory = directory,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var process = Process.Start(psi) ?? throw new InvalidOperationException("Could not start " + file);
            var stderr = process.StandardError.ReadToEndAsync();
            var stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, stdout + stderr.Result);
        }

        private static string FindNagDirectory()
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "infra", "nag");
                if (File.Exists(Path.Combine(candidate, "check.mjs"))) return candidate;
            }
            throw new InvalidOperationException("infra/nag/check.mjs not found above " + AppContext.BaseDirectory);
        }
    }

    public sealed class NagResult
    {
        public NagResult(int exitCode, string output, JsonElement json)
        {
            ExitCode = exitCode;
            Output = output;
            Json = json;
        }

        public int ExitCode { get; }
        public string Output { get; }
        public JsonElement Json { get; }

        public string[] FindingRuleIds => Json.GetProperty("findings").EnumerateArray().Select(f => f.GetProperty("ruleId").GetString()!).ToArray();

        /// <summary>"ruleId on logicalId" of the unacknowledged findings, sorted.</summary>
        public string[] Findings => Json.GetProperty("findings").EnumerateArray()
            .Select(f => f.GetProperty("ruleId").GetString() + " on " + f.GetProperty("logicalId").GetString())
            .OrderBy(s => s, StringComparer.Ordinal).ToArray();

        public string[] Packs => Json.GetProperty("packs").EnumerateArray().Select(p => p.GetString()!).ToArray();

        /// <summary>How many checks of <paramref name="pack"/> passed.</summary>
        public int CompliantChecks(string pack) =>
            Json.GetProperty("compliantByPack").TryGetProperty(pack, out var n) ? n.GetInt32() : 0;

        public string[] Problems => Json.GetProperty("problems").EnumerateArray().Select(p => p.GetString()!).ToArray();

        /// <summary>"ruleId on logicalId" (with [findingId] for granular rules), sorted.</summary>
        public string[] Acknowledged => Json.GetProperty("acknowledged").EnumerateArray()
            .Select(a =>
            {
                var finding = a.GetProperty("findingId").GetString();
                return a.GetProperty("ruleId").GetString() + (string.IsNullOrEmpty(finding) ? "" : "[" + finding + "]") + " on " + a.GetProperty("logicalId").GetString();
            })
            .OrderBy(s => s, StringComparer.Ordinal).ToArray();
    }
}
