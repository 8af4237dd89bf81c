using System;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Runtime.Loader;

namespace BastionTools.LoadContext
{
    /// <summary>
    /// PowerShell 7 only: loads BastionTools.dll and its dependencies (AWSSDK.*, Npgsql, ...) into an
    /// AssemblyLoadContext of their own, so that another module's copy of the same assemblies (AWS.Tools ships
    /// AWSSDK.Core) can be loaded into the same session in any version, before or after this one.
    /// Framework assemblies and PowerShell's own (System.Management.Automation) are shared with the default
    /// context: the cmdlets must see the same PowerShell types as the host.
    /// </summary>
    public sealed class ModuleLoadContext : AssemblyLoadContext
    {
        private static readonly object Gate = new();
        private static ModuleLoadContext? s_instance;

        private readonly string _directory;
        private readonly HashSet<string> _shared;

        private ModuleLoadContext(string directory)
            : base("BastionTools", isCollectible: false)
        {
            _directory = directory;
            _shared = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            // The trusted platform assemblies are the runtime's and the host's (pwsh) own: always share those.
            var tpa = AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") as string ?? string.Empty;
            foreach (var path in tpa.Split(Path.PathSeparator))
            {
                if (path.Length > 0) _shared.Add(Path.GetFileNameWithoutExtension(path));
            }
        }

        /// <summary>The directory the isolated assemblies are loaded from.</summary>
        public string Directory => _directory;

        /// <summary>Loads (once per process) the module assembly from <paramref name="directory"/> into the isolated context.</summary>
        public static Assembly LoadModuleAssembly(string directory, string assemblyName)
        {
            lock (Gate)
            {
                var full = Path.GetFullPath(directory);
                if (s_instance == null)
                {
                    s_instance = new ModuleLoadContext(full);
                }
                else if (!string.Equals(s_instance._directory, full, StringComparison.Ordinal))
                {
                    throw new InvalidOperationException(
                        $"BastionTools is already loaded from '{s_instance._directory}' in this process; start a new session to load it from '{full}'.");
                }
                return s_instance.LoadFromAssemblyName(new AssemblyName(assemblyName));
            }
        }

        protected override Assembly? Load(AssemblyName assemblyName)
        {
            var name = assemblyName.Name;
            if (name == null || _shared.Contains(name)) return null;
            var path = Path.Combine(_directory, name + ".dll");
            return File.Exists(path) ? LoadFromAssemblyPath(path) : null;
        }
    }
}
