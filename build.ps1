<#
.SYNOPSIS
    BastionTools front door: build, test, demo and benchmarks.

.DESCRIPTION
    Build  - compiles the C# core and lays out an importable module in out/BastionTools.
    Test   - Build, then xUnit (the module's and the infrastructure's, infra/) and Pester; results as JUnit/NUnit XML
             under out/test-results; one summary line. The infrastructure tests run cdk-nag with Node: 'npm ci' in
             infra/nag first when its node_modules is missing.
    Demo   - Build, then the user story against local doubles of AWS (grows with each feature).
    Bench  - Build, then the benchmark commands under bench/ (figures printed, never asserted).
    Package - Build, then out/BastionTools packed as out/packages/BastionTools.<version>.nupkg (Compress-PSResource:
             the nuspec comes from the manifest), for Install-PSResource or Install-Module from a repository.

    Pinned tools come from the local dotnet tool manifest (PowerShell 7.6.9, run this script with
    'dotnet pwsh') and from NuGet into the git-ignored tools/packages (Pester 6.2.0). Nothing is installed
    globally.

.EXAMPLE
    dotnet tool restore; dotnet pwsh ./build.ps1 -Task Test
#>
[CmdletBinding()]
param(
    [ValidateSet('Build', 'Test', 'Demo', 'Bench', 'Package')]
    [string] $Task = 'Build',

    [ValidateSet('Debug', 'Release')]
    [string] $Configuration = 'Release',

    # Test: only run Pester files whose path matches this pattern, or only one of the runners.
    [string] $PesterFilter,
    [switch] $SkipXunit,
    [switch] $SkipPester
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

$Root = $PSScriptRoot
$Out = Join-Path $Root 'out'
$ModuleOut = Join-Path $Out 'BastionTools'
$ResultsDir = Join-Path $Out 'test-results'
$ToolsPackages = Join-Path $Root 'tools/packages'

# Tests and demos must never reach the real EC2 instance metadata service from a developer or CI machine.
$env:AWS_EC2_METADATA_DISABLED = 'true'
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'

function Invoke-Native {
    param([Parameter(Mandatory)] [string] $FilePath, [string[]] $ArgumentList = @(), [switch] $AllowFailure)
    Write-Host "> $FilePath $($ArgumentList -join ' ')" -ForegroundColor DarkGray
    & $FilePath @ArgumentList | Out-Host
    if ($LASTEXITCODE -ne 0 -and -not $AllowFailure) {
        throw "'$FilePath $($ArgumentList -join ' ')' failed with exit code $LASTEXITCODE."
    }
    return $LASTEXITCODE
}

function Get-ModuleVersion {
    (Import-PowerShellDataFile (Join-Path $Root 'BastionTools.psd1')).ModuleVersion
}

function Restore-Tools {
    $pester = Join-Path $ToolsPackages 'pester/6.2.0/tools/Pester.psd1'
    if (-not (Test-Path $pester)) {
        Invoke-Native dotnet @('restore', (Join-Path $Root 'tools/tools.csproj'), '--packages', $ToolsPackages, '--nologo', '-v', 'q') | Out-Null
    }
    if (-not (Test-Path $pester)) { throw "Pester 6.2.0 was not restored to $pester." }
}

function Invoke-Build {
    $version = Get-ModuleVersion
    Write-Host "== Build BastionTools $version ($Configuration)" -ForegroundColor Cyan
    $staging = Join-Path $Out 'staging'
    if (Test-Path $ModuleOut) { Remove-Item $ModuleOut -Recurse -Force }
    if (Test-Path $staging) { Remove-Item $staging -Recurse -Force }

    $common = @('-c', $Configuration, '--nologo', '-v', 'q', "-p:BastionToolsVersion=$version")
    Invoke-Native dotnet (@('publish', (Join-Path $Root 'src/BastionTools/BastionTools.csproj'), '-o', (Join-Path $staging 'lib')) + $common) | Out-Null
    Invoke-Native dotnet (@('publish', (Join-Path $Root 'src/BastionTools.LoadContext/BastionTools.LoadContext.csproj'), '-o', (Join-Path $staging 'loader')) + $common) | Out-Null

    $bin = Join-Path $ModuleOut 'bin'
    $lib = Join-Path $bin 'lib'
    New-Item -ItemType Directory -Force -Path $lib | Out-Null
    Copy-Item (Join-Path $Root 'BastionTools.psd1'), (Join-Path $Root 'LICENSE') $ModuleOut
    Copy-Item (Join-Path $Root 'module/*') $ModuleOut -Recurse
    Copy-Item (Join-Path $staging 'loader/BastionTools.LoadContext.dll') $bin
    # Everything the core needs, except PowerShell's own assembly (the host provides it).
    Get-ChildItem (Join-Path $staging 'lib') -File |
        Where-Object { $_.Name -notin 'System.Management.Automation.dll' -and $_.Extension -in '.dll', '.pdb' } |
        Copy-Item -Destination $lib
    Remove-Item $staging -Recurse -Force

    $manifest = Test-ModuleManifest (Join-Path $ModuleOut 'BastionTools.psd1') -ErrorAction Stop
    $asmVersion = [System.Reflection.AssemblyName]::GetAssemblyName((Join-Path $lib 'BastionTools.dll')).Version
    if ("$($asmVersion.Major).$($asmVersion.Minor).$($asmVersion.Build)" -ne $manifest.Version.ToString()) {
        throw "Assembly version $asmVersion does not match the manifest's $($manifest.Version)."
    }
    Invoke-HelpBuild
    Write-Host "   $ModuleOut" -ForegroundColor DarkGray
}

function Invoke-HelpBuild {
    # MAML help from docs/help/*.md, in a PowerShell of its own (it imports the built module).
    $pwsh = [Environment]::ProcessPath
    $pwshArgs = @()
    if ([System.IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { $pwshArgs += (Join-Path $PSHOME 'pwsh.dll') }
    $pwshArgs += @('-NoProfile', '-NonInteractive', '-File', (Join-Path $Root 'build/New-MamlHelp.ps1'),
        '-ModulePath', (Join-Path $ModuleOut 'BastionTools.psd1'), '-DocsPath', (Join-Path $Root 'docs/help'),
        '-OutputPath', (Join-Path $ModuleOut 'en-US/BastionTools.dll-Help.xml'))
    Invoke-Native $pwsh $pwshArgs | Out-Null
}

function Build-Sandbox {
    # The local doubles of AWS (and the PostgreSQL they front), for Pester and the demo.
    $dir = Join-Path $Out 'sandbox'
    Invoke-Native dotnet @('build', (Join-Path $Root 'tests/Sandbox/BastionTools.Sandbox.csproj'), '-c', $Configuration, '--nologo', '-v', 'q', '-o', $dir) | Out-Null
    $env:BASTIONTOOLS_SANDBOX = Join-Path $dir 'BastionTools.Sandbox.dll'
}

function Read-JUnitCounts([string] $Path) {
    [xml] $xml = Get-Content -Raw $Path
    $suites = @($xml.SelectNodes('//testsuite'))
    $total = 0; $failed = 0; $skipped = 0
    foreach ($s in $suites) {
        $total += [int] $s.tests
        $failed += [int] $s.failures + [int] $s.errors
        if ($s.HasAttribute('skipped')) { $skipped += [int] $s.skipped }
    }
    [pscustomobject]@{ Passed = $total - $failed - $skipped; Failed = $failed; Skipped = $skipped }
}

function Invoke-XunitProject([string] $Project, [string] $Name) {
    Write-Host "== xUnit ($Name)" -ForegroundColor Cyan
    $junit = Join-Path $ResultsDir "$Name.junit.xml"
    $code = Invoke-Native dotnet @(
        'test', $Project, '-c', $Configuration, '--nologo',
        '--logger', "junit;LogFilePath=$junit;MethodFormat=Class;FailureBodyFormat=Verbose",
        '--logger', "trx;LogFileName=$(Join-Path $ResultsDir "$Name.trx")",
        '--logger', 'console;verbosity=minimal'
    ) -AllowFailure
    if (-not (Test-Path $junit)) {
        Write-Host "xUnit ($Name) produced no results (exit code $code)." -ForegroundColor Red
        return [pscustomobject]@{ Passed = 0; Failed = 1; Skipped = 0 }
    }
    $counts = Read-JUnitCounts $junit
    if ($code -ne 0 -and $counts.Failed -eq 0) { $counts.Failed = 1 }   # the run itself broke
    $counts
}

function Invoke-Xunit {
    # The sandbox's stand-in for a Windows agent's powershell.exe (tests/Sandbox/WindowsPowerShell.cs): this pwsh.
    if (-not $env:BASTIONTOOLS_SANDBOX_POWERSHELL) {
        $env:BASTIONTOOLS_SANDBOX_POWERSHELL = if ([System.IO.Path]::GetFileNameWithoutExtension([Environment]::ProcessPath) -eq 'dotnet') { Join-Path $PSHOME 'pwsh.dll' } else { [Environment]::ProcessPath }
    }
    Invoke-XunitProject (Join-Path $Root 'tests/BastionTools.Tests/BastionTools.Tests.csproj') 'xunit'
}

function Restore-NagTools {
    # cdk-nag (npm) for the infrastructure tests, from infra/nag/package-lock.json; needs Node.js 20+ and npm.
    $nag = Join-Path $Root 'infra/nag'
    if (-not (Test-Path (Join-Path $nag 'node_modules/cdk-nag/package.json'))) {
        Push-Location $nag
        try { Invoke-Native npm @('ci', '--no-audit', '--no-fund', '--prefer-offline') | Out-Null }
        finally { Pop-Location }
    }
}

function Invoke-InfraXunit {
    Restore-NagTools
    Invoke-XunitProject (Join-Path $Root 'infra/BastionTools.Infra.Tests/BastionTools.Infra.Tests.csproj') 'infra'
}

function Invoke-PesterTests {
    Write-Host '== Pester' -ForegroundColor Cyan
    $summary = Join-Path $ResultsDir 'pester.summary.json'
    if (Test-Path $summary) { Remove-Item $summary }
    $runner = Join-Path $Root 'tests/Invoke-PesterTests.ps1'
    $pwsh = [Environment]::ProcessPath
    $pwshArgs = @()
    if ([System.IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { $pwshArgs += (Join-Path $PSHOME 'pwsh.dll') }
    $pwshArgs += @('-NoProfile', '-NonInteractive', '-File', $runner,
        '-ModulePath', (Join-Path $ModuleOut 'BastionTools.psd1'),
        '-PesterPath', (Join-Path $ToolsPackages 'pester/6.2.0/tools/Pester.psd1'),
        '-ResultsDir', $ResultsDir)
    if ($PesterFilter) { $pwshArgs += @('-Filter', $PesterFilter) }
    $code = Invoke-Native $pwsh $pwshArgs -AllowFailure
    if (-not (Test-Path $summary)) {
        Write-Host "Pester produced no results (exit code $code)." -ForegroundColor Red
        return [pscustomobject]@{ Passed = 0; Failed = 1; Skipped = 0 }
    }
    Get-Content -Raw $summary | ConvertFrom-Json
}

function Invoke-Test {
    Invoke-Build
    Restore-Tools
    Build-Sandbox
    if (Test-Path $ResultsDir) { Remove-Item $ResultsDir -Recurse -Force }
    New-Item -ItemType Directory -Force -Path $ResultsDir | Out-Null

    $results = @()
    if (-not $SkipXunit) { $results += Invoke-Xunit; $results += Invoke-InfraXunit }
    if (-not $SkipPester) { $results += Invoke-PesterTests }

    $passed = ($results | Measure-Object -Property Passed -Sum).Sum
    $failed = ($results | Measure-Object -Property Failed -Sum).Sum
    $skipped = ($results | Measure-Object -Property Skipped -Sum).Sum
    Write-Host "Results: $ResultsDir"
    if ($skipped) { Write-Host "($skipped skipped, not counted as passed)" }
    Write-Output "Tests: $passed passed, $failed failed"
    if ($failed -gt 0) { exit 1 }
}

function Invoke-Demo {
    Invoke-Build
    Build-Sandbox
    & (Join-Path $Root 'demo/Invoke-Demo.ps1') -ModulePath (Join-Path $ModuleOut 'BastionTools.psd1')
}

function Invoke-Bench {
    Invoke-Build
    Build-Sandbox
    $pwsh = [Environment]::ProcessPath
    $prefix = @()
    if ([System.IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { $prefix += (Join-Path $PSHOME 'pwsh.dll') }
    foreach ($bench in Get-ChildItem (Join-Path $Root 'bench') -Filter '*.bench.ps1' | Sort-Object Name) {
        Write-Host "== $($bench.Name)" -ForegroundColor Cyan
        Invoke-Native $pwsh ($prefix + @('-NoProfile', '-NonInteractive', '-File', $bench.FullName, '-ModulePath', (Join-Path $ModuleOut 'BastionTools.psd1'))) | Out-Null
    }
}

function Invoke-Package {
    Invoke-Build
    $version = Get-ModuleVersion
    Write-Host "== Package BastionTools $version" -ForegroundColor Cyan
    $packages = Join-Path $Out 'packages'
    if (Test-Path $packages) { Remove-Item $packages -Recurse -Force }
    New-Item -ItemType Directory -Force -Path $packages | Out-Null
    # What Publish-PSResource would push, without registering a repository (PSResourceGet 1.1+, in PowerShell 7.4+).
    # PSResourceGet creates its repository store on first use: point it at a scratch folder, not the user's.
    Import-Module Microsoft.PowerShell.PSResourceGet -MinimumVersion 1.1.0
    $store = Join-Path $Out 'psresourceget-store'
    New-Item -ItemType Directory -Force -Path $store | Out-Null
    $saved = $env:XDG_DATA_HOME, $env:LOCALAPPDATA
    try {
        $env:XDG_DATA_HOME = $store; $env:LOCALAPPDATA = $store
        Compress-PSResource -Path $ModuleOut -DestinationPath $packages
    }
    finally {
        $env:XDG_DATA_HOME, $env:LOCALAPPDATA = $saved
        Remove-Item $store -Recurse -Force
    }
    $nupkg = Join-Path $packages "BastionTools.$version.nupkg"
    if (-not (Test-Path $nupkg)) { throw "Compress-PSResource did not write $nupkg." }
    Write-Host "   $nupkg ($((Get-Item $nupkg).Length) bytes)" -ForegroundColor DarkGray
}

switch ($Task) {
    'Build' { Invoke-Build }
    'Test' { Invoke-Test }
    'Demo' { Invoke-Demo }
    'Bench' { Invoke-Bench }
    'Package' { Invoke-Package }
}
