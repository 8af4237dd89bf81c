# BastionTools loader.
# PowerShell 7+: BastionTools.dll and its dependencies load into their own AssemblyLoadContext
# (bin/BastionTools.LoadContext.dll), so AWS.Tools or any other module may load other versions of AWSSDK.Core,
# Npgsql or System.Text.Json into the same session. Windows PowerShell 5.1 has no load contexts: the
# assemblies load from bin/lib with LoadFrom semantics.
Set-StrictMode -Version 3.0

$lib = [System.IO.Path]::Combine($PSScriptRoot, 'bin', 'lib')
$isReload = $false
if ($PSVersionTable.PSEdition -eq 'Core') {
    if ('BastionTools.LoadContext.ModuleLoadContext' -as [type]) {
        $isReload = $true
    }
    else {
        Add-Type -Path ([System.IO.Path]::Combine($PSScriptRoot, 'bin', 'BastionTools.LoadContext.dll'))
    }
    $assembly = [BastionTools.LoadContext.ModuleLoadContext]::LoadModuleAssembly($lib, 'BastionTools')
}
else {
    $assembly = [System.Reflection.Assembly]::LoadFrom([System.IO.Path]::Combine($lib, 'BastionTools.dll'))
    $isReload = $null -ne (Get-Module | Where-Object { $_.ImplementingAssembly -eq $assembly })
}

$binary = Import-Module -Assembly $assembly -PassThru -DisableNameChecking
if ($isReload -and $binary) {
    # Importing the same assembly again (Import-Module -Force, or after Remove-Module) returns PowerShell's cached
    # binary module without adding its cmdlets to this module's scope (PowerShell/PowerShell#20710):
    # add them to this module's exports directly.
    $addExportedCmdlet = [System.Management.Automation.PSModuleInfo].GetMethod('AddExportedCmdlet', [System.Reflection.BindingFlags]'Instance, NonPublic')
    foreach ($cmdlet in $binary.ExportedCmdlets.Values) {
        $addExportedCmdlet.Invoke($ExecutionContext.SessionState.Module, @(, $cmdlet))
    }
}

# Remove-Module ends the sessions this module opened: listeners closed, sessions terminated.
$ExecutionContext.SessionState.Module.OnRemove = {
    $assembly.GetType('BastionTools.ModuleLifetime').GetMethod('OnRemove').Invoke($null, @())
}.GetNewClosure()
