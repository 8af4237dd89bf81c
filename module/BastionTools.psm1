# BastionTools loader.
# PowerShell 7+: BastionTools.dll and its dependencies load into their own AssemblyLoadContext
# (bin/BastionTools.LoadContext.dll), so AWS.Tools or any other module may load other versions of AWSSDK.Core,
# Npgsql or System.Text.Json into the same session. Windows PowerShell 5.1 has no load contexts: the
# assemblies load from bin/lib with LoadFrom semantics.
Set-StrictMode -Version 3.0

$lib = [System.IO.Path]::Combine($PSScriptRoot, 'bin', 'lib')
if ($PSVersionTable.PSEdition -eq 'Core') {
    $loader = [System.IO.Path]::Combine($PSScriptRoot, 'bin', 'BastionTools.LoadContext.dll')
    if (-not ('BastionTools.LoadContext.ModuleLoadContext' -as [type])) {
        Add-Type -Path $loader
    }
    $assembly = [BastionTools.LoadContext.ModuleLoadContext]::LoadModuleAssembly($lib, 'BastionTools')
}
else {
    $assembly = [System.Reflection.Assembly]::LoadFrom([System.IO.Path]::Combine($lib, 'BastionTools.dll'))
}

$binary = Import-Module -Assembly $assembly -PassThru -Force -DisableNameChecking
$binary | Out-Null

Export-ModuleMember -Cmdlet $binary.ExportedCmdlets.Keys
