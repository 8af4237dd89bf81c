using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text.Json;
using Amazon.CDK;
using Amazon.CDK.Assertions;

namespace BastionTools.Infra.Tests
{
    /// <summary>
    /// One configuration, synthesized once: the stack (for logical ids), the template as Amazon.CDK.Assertions sees it,
    /// and the same JSON for walks over every resource. Fixed environment: account 123456789012, eu-west-1, with the
    /// availability zones given as context (what 'cdk deploy' would look up and cache in cdk.context.json).
    /// </summary>
    public sealed class Synthesized
    {
        public const string Account = "123456789012";
        public const string Region = "eu-west-1";

        /// <summary>This run's scratch directory (cloud assemblies, edited templates); removed when the run ends.</summary>
        public static readonly string RunDirectory = Path.Combine(Path.GetTempPath(), "bastiontools-infra-tests", Guid.NewGuid().ToString("n")[..12]);

        private Synthesized(BastionStack stack, string templatePath, TimeSpan elapsed)
        {
            Stack = stack;
            TemplatePath = templatePath;
            Elapsed = elapsed;
            var text = File.ReadAllText(templatePath);
            Template = Template.FromString(text);
            Json = JsonDocument.Parse(text).RootElement.Clone();
        }

        public BastionStack Stack { get; }
        public string TemplatePath { get; }
        public Template Template { get; }
        public JsonElement Json { get; }

        /// <summary>Wall time of this synthesis (the first one includes starting the jsii runtime).</summary>
        public TimeSpan Elapsed { get; }

        public static Synthesized Create(string name, BastionSettings settings)
        {
            var sw = Stopwatch.StartNew();
            var outdir = Path.Combine(RunDirectory, name + "-" + Guid.NewGuid().ToString("n")[..8]);
            var app = new App(new AppProps
            {
                Outdir = outdir,
                Context = new Dictionary<string, object>
                {
                    [$"availability-zones:account={Account}:region={Region}"] = new[] { "eu-west-1a", "eu-west-1b", "eu-west-1c" },
                },
            });
            var stack = new BastionStack(app, "BastionTools", new BastionStackProps
            {
                Settings = settings,
                Env = new Amazon.CDK.Environment { Account = Account, Region = Region },
            });
            var assembly = app.Synth();
            var path = assembly.GetStackByName(stack.StackName).TemplateFullPath;
            return new Synthesized(stack, path, sw.Elapsed);
        }

        public string Id(Constructs.IConstruct construct) => Id(construct as CfnElement ?? (CfnElement)construct.Node.DefaultChild!);

        public string Id(CfnElement element) => Stack.GetLogicalId(element);

        public IEnumerable<(string Id, JsonElement Resource)> Resources(string type) =>
            Json.GetProperty("Resources").EnumerateObject()
                .Where(p => p.Value.GetProperty("Type").GetString() == type)
                .Select(p => (p.Name, p.Value));

        public JsonElement Resource(string logicalId) => Json.GetProperty("Resources").GetProperty(logicalId);

        public JsonElement Properties(string logicalId) => Resource(logicalId).GetProperty("Properties");

        /// <summary>
        /// A CloudFormation value as one string: Ref as {Name}, GetAtt as {Name.Attr}, Fn::Join joined; e.g.
        /// arn:{AWS::Partition}:rds-db:{AWS::Region}:{AWS::AccountId}:dbuser:{PostgresInstance….DbiResourceId}/app_reader.
        /// </summary>
        public static string Render(JsonElement value)
        {
            switch (value.ValueKind)
            {
                case JsonValueKind.String:
                    return value.GetString()!;
                case JsonValueKind.Object when value.TryGetProperty("Ref", out var r):
                    return "{" + r.GetString() + "}";
                case JsonValueKind.Object when value.TryGetProperty("Fn::GetAtt", out var a):
                    return "{" + a[0].GetString() + "." + a[1].GetString() + "}";
                case JsonValueKind.Object when value.TryGetProperty("Fn::Join", out var j):
                    return string.Join(j[0].GetString(), j[1].EnumerateArray().Select(Render));
                default:
                    return value.GetRawText();
            }
        }

        /// <summary>A value that may be one item or a list, as a list.</summary>
        public static IEnumerable<JsonElement> Many(JsonElement value) =>
            value.ValueKind == JsonValueKind.Array ? value.EnumerateArray().ToArray() : new[] { value };

        /// <summary>Every statement of every IAM policy document in the template, with the resource that holds it.</summary>
        public IEnumerable<(string Id, JsonElement Statement)> PolicyStatements()
        {
            foreach (var res in Json.GetProperty("Resources").EnumerateObject())
            {
                if (!res.Value.TryGetProperty("Properties", out var props)) continue;
                var documents = new List<JsonElement>();
                if (props.TryGetProperty("PolicyDocument", out var doc)) documents.Add(doc);
                if (props.TryGetProperty("Policies", out var policies))
                {
                    documents.AddRange(policies.EnumerateArray().Select(p => p.GetProperty("PolicyDocument")));
                }
                foreach (var d in documents)
                {
                    foreach (var st in Many(d.GetProperty("Statement"))) yield return (res.Name, st);
                }
            }
        }
    }

    /// <summary>The configurations under test, each synthesized on first use and then shared by every test class.</summary>
    public sealed class Stacks : IDisposable
    {
        public static readonly BastionSettings ShellSettings = new()
        {
            EnableShell = true,
            MultiAz = true,
            SessionDataKms = true,
            DbPort = 6543,
            DbUsers = new[] { "app_reader", "app_writer" },
            LogGroupName = "/ops/bastion-sessions",
            LogRetentionDays = 90,
            IdleTimeoutMinutes = 10,
        };

        // Also the configuration with session data encryption turned off.
        public static readonly BastionSettings GithubSettings = new()
        {
            SessionDataKms = false,
            GithubRepo = "octo-org/octo-repo",
            AllowedOperatorPrincipals = new[] { "arn:aws:iam::123456789012:role/ops-admins" },
        };

        private readonly Dictionary<string, Lazy<Synthesized>> _stacks;

        public Stacks()
        {
            _stacks = new Dictionary<string, Lazy<Synthesized>>
            {
                ["default"] = Lazy("default", new BastionSettings()),
                ["nat"] = Lazy("nat", new BastionSettings { UseNat = true }),
                ["shell"] = Lazy("shell", ShellSettings),
                ["github"] = Lazy("github", GithubSettings),
                ["production"] = Lazy("production", BastionSettings.ForProfile("production")),
                ["github-existing-provider"] = Lazy("github-existing-provider", GithubSettings with
                {
                    GithubOidcProviderArn = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com",
                    AllowedOperatorPrincipals = Array.Empty<string>(),
                }),
            };
        }

        public static IEnumerable<object[]> Names => new[] { "default", "nat", "shell", "github", "github-existing-provider", "production" }.Select(n => new object[] { n });

        public Synthesized Default => this["default"];
        public Synthesized Nat => this["nat"];
        public Synthesized Shell => this["shell"];
        public Synthesized Github => this["github"];

        /// <summary>The production profile (-c profile=production) with nothing else set.</summary>
        public Synthesized Production => this["production"];

        public Synthesized this[string name] => _stacks[name].Value;

        /// <summary>Synthesis times so far, for the test log.</summary>
        public string Timings => string.Join(", ", _stacks.Where(s => s.Value.IsValueCreated).Select(s => $"{s.Key} {s.Value.Value.Elapsed.TotalSeconds:0.00} s"));

        private static Lazy<Synthesized> Lazy(string name, BastionSettings settings) => new(() => Synthesized.Create(name, settings));

        public void Dispose()
        {
            try
            {
                if (Directory.Exists(Synthesized.RunDirectory)) Directory.Delete(Synthesized.RunDirectory, recursive: true);
            }
            catch (IOException)
            {
                // Scratch files only; a later run does not read them.
            }
        }
    }

    [Xunit.CollectionDefinition(Name)]
    public sealed class InfraCollection : Xunit.ICollectionFixture<Stacks>, Xunit.ICollectionFixture<NagChecker>
    {
        public const string Name = "infra";
    }
}
